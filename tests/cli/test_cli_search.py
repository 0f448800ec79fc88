"""The search commands: run / resume / results (argument handling and output)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from raysearch.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "search"))
from search_helpers import run_cli, write_study  # noqa: E402


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for opt in ("--address", "--storage", "--name", "study"):
        assert opt in out
    with pytest.raises(SystemExit):
        main(["results", "--csv", "a", "--parquet", "b", "x"])  # one export format at a time


def test_bad_study_is_one_message_and_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    d = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml").read_text()
    )
    d["search"]["num_sample"] = 4
    p.write_text(yaml.safe_dump(d))
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err
    assert "search.num_sample: unknown key" in err and str(p) in err
    assert "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()  # nothing started, nothing written


def test_resume_and_results_of_a_non_experiment(tmp_path, capsys):
    assert main(["resume", str(tmp_path)]) == 2
    assert "study.yaml" in capsys.readouterr().err
    assert main(["results", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_run_with_storage_and_name_then_results(ray_session, tmp_path, capsys):
    study = write_study(tmp_path, search={"mode": "grid", "lam": [0.001, 0.1]})
    out_dir = tmp_path / "elsewhere"
    assert main(["run", str(study), "--storage", str(out_dir), "--name", "renamed"]) == 0
    out = capsys.readouterr().out
    exp = out_dir / "renamed"
    assert (exp / "study.yaml").is_file() and len(list((exp / "models").glob("*.h5"))) == 2
    assert "Best lambda:" in out or "Best lambda: none" in out
    assert "Bad models per lambda range" in out and str(exp) in out
    assert main(["results", str(exp)]) == 0
    table = capsys.readouterr().out
    assert table.count("TERMINATED") == 2
    assert main(["results", str(exp), "--history"]) == 0
    assert capsys.readouterr().out.count("TERMINATED") == 8  # 4 reports per trial


def test_console_script_runs_in_a_fresh_process():
    res = run_cli("run", "--help", timeout=60)
    assert res.returncode == 0 and "--address" in res.stdout


def test_missing_recording_file_stops_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = Path(__file__).resolve().parents[2] / "experiments" / "l1_published_grid.yaml"
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "fish.h5" in err and "Traceback" not in err
    assert not (tmp_path / "ray_results").exists()
