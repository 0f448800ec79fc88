"""Reading an experiment directory that a crash, a resume or a user left odd (issue 16).

No Ray here: the directories are laid out by hand as Tune writes them (``experiment_state-*.json``,
trial folders with ``params.json`` / ``result.json``, ``study.yaml``, ``models/``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from raysearch.cli import main
from raysearch.search import load_results


def _state(path: Path, statuses: dict, start_time: float) -> None:
    trial_data = []
    for tid, status in statuses.items():
        info = {
            "trial_id": tid,
            "status": status,
            "relative_logdir": f"crbm_trial_{tid}_lam=0.01",
            "config": json.dumps({"lam": 0.01, "seed": 0, "recording": "fish"}),
        }
        trial_data.append([json.dumps(info), "{}"])
    path.write_text(
        json.dumps(
            {"trial_data": trial_data, "runner_data": {}, "stats": {"start_time": start_time}}
        )
    )


def _experiment(root: Path, n=2, study_text="name: s\nsearch: {objective: mean_nrmse}\n"):
    exp = root / "exp"
    exp.mkdir()
    for i in range(n):
        tid = f"abcde_{i:05d}"
        d = exp / f"crbm_trial_{tid}_lam=0.01"
        d.mkdir()
        (d / "params.json").write_text(
            json.dumps({"lam": 0.01 * (i + 1), "seed": 0, "recording": "fish"})
        )
        rows = [
            {
                "trial_id": tid,
                "lam": 0.01 * (i + 1),
                "updates": u,
                "mean_nrmse": 0.5,
                "max_nrmse": 0.6,
                "bad": False,
                "training_iteration": k + 1,
            }
            for k, u in enumerate((10, 20))
        ]
        (d / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if study_text is not None:
        (exp / "study.yaml").write_bytes(
            study_text.encode() if isinstance(study_text, str) else study_text
        )
    return exp


def test_state_of_the_newest_session_wins_whatever_the_modification_times(tmp_path):
    """After a resume Tune uploads the old session's state file and the new one ~1 ms apart, in
    no fixed order; the stale one (trials RUNNING) must not win by modification time."""
    exp = _experiment(tmp_path)
    ids = ["abcde_00000", "abcde_00001"]
    old = exp / "experiment_state-2026-01-05_10-00-00.json"
    new = exp / "experiment_state-2026-01-05_10-07-30.json"
    _state(old, dict.fromkeys(ids, "RUNNING"), 1000.0)
    _state(new, dict.fromkeys(ids, "TERMINATED"), 1450.0)
    os.utime(new, (2_000_000_000, 2_000_000_000))
    os.utime(old, (2_000_000_000.001, 2_000_000_000.001))  # the stale file is 1 ms newer
    df = load_results(exp)
    assert df["status"].tolist() == ["TERMINATED", "TERMINATED"]


def test_unreadable_newest_state_falls_back_with_a_warning(tmp_path, caplog):
    exp = _experiment(tmp_path)
    _state(
        exp / "experiment_state-2026-01-05_10-00-00.json",
        {"abcde_00000": "TERMINATED", "abcde_00001": "ERROR"},
        1000.0,
    )
    (exp / "experiment_state-2026-01-05_11-00-00.json").write_text('{"trial_data": [[')
    with caplog.at_level(logging.WARNING, logger="raysearch.search.results"):
        df = load_results(exp)
    assert df["status"].tolist() == ["TERMINATED", "ERROR"]
    assert "experiment_state-2026-01-05_11-00-00.json" in caplog.text


def test_corrupt_result_line_is_reported_with_file_and_line(tmp_path, caplog):
    exp = _experiment(tmp_path, n=1)
    result = next(exp.glob("crbm_trial_*")) / "result.json"
    lines = result.read_text().splitlines()
    result.write_text(lines[0] + "\n" + '{"trial_id": "abcde_00000", "upd\x00\n' + lines[1] + "\n")
    with caplog.at_level(logging.WARNING, logger="raysearch.search.results"):
        hist = load_results(exp, history=True)
    assert hist["updates"].tolist() == [10, 20]  # the good lines are kept
    assert f"{result} line 2 is not a JSON report" in caplog.text


@pytest.mark.parametrize(
    "text",
    [
        b"name: s\nsearch: [unclosed\n",
        b"\xff\xfe\x00garbage",
        b"just a string",
        b"search: 7\n",
        b"search: {objective: bogus}\n",
    ],
)
def test_corrupt_study_yaml_results_warn_and_resume_is_one_line(tmp_path, capsys, caplog, text):
    exp = _experiment(tmp_path, study_text=text)
    _state(
        exp / "experiment_state-2026-01-05_10-00-00.json",
        {"abcde_00000": "TERMINATED", "abcde_00001": "TERMINATED"},
        1000.0,
    )
    with caplog.at_level(logging.WARNING, logger="raysearch.search.results"):
        rc = main(["results", str(exp)])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err
    assert f"{exp / 'study.yaml'}" in caplog.text and "abcde_00001" in out
    # resume needs the study: one error line, before any Ray is started
    rc = main(["resume", str(exp)])
    out, err = capsys.readouterr()
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("raysearch resume: error:")]
    assert len(lines) == 1 and "study" in lines[0] and "Traceback" not in err
    assert "Ray dashboard" not in out


def test_unfinished_trials_are_counted():
    import pandas as pd

    from raysearch.search.config import study_from_dict
    from raysearch.search.tuner import _unfinished

    study = study_from_dict(
        {
            "name": "s",
            "recordings": [{"synthetic": {}}],
            "search": {"lam": {"low": 1e-3, "high": 1}, "num_samples": 4},
        }
    )
    df = pd.DataFrame({"status": ["TERMINATED", "ERROR", "RUNNING"]})
    assert _unfinished(study, None, df) == 2  # one RUNNING, one never started
    df = pd.DataFrame({"status": ["TERMINATED"] * 3 + ["ERROR"]})
    assert _unfinished(study, None, df) == 0


@pytest.mark.parametrize("unfinished, errors, rc", [(0, 0, 0), (0, 1, 1), (2, 0, 3), (1, 1, 3)])
def test_exit_status_of_run_and_resume(capsys, unfinished, errors, rc):
    from raysearch.cli.search import _exit_status
    from raysearch.search.tuner import StudyRun

    run = StudyRun(
        experiment_dir="/x/exp", results=None, num_errors=errors, num_unfinished=unfinished
    )
    assert _exit_status(run) == rc
    err = capsys.readouterr().err
    assert ("raysearch resume /x/exp" in err) == (unfinished > 0)


def test_results_into_a_closed_pipe_is_not_a_traceback(tmp_path):
    """``raysearch results DIR | head -1``: the reader is gone before the table is written."""
    import subprocess
    import sys

    exp = _experiment(tmp_path)
    _state(
        exp / "experiment_state-2026-01-05_10-00-00.json",
        {"abcde_00000": "TERMINATED", "abcde_00001": "TERMINATED"},
        1000.0,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "raysearch", "results", str(exp)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "Exception ignored" not in err, err
