"""The study schema: shipped studies load, every kind of mistake gives one clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raysearch.errors import ConfigError
from raysearch.search.config import LamRange, default_study_path, load_study, study_from_dict

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = sorted((ROOT / "experiments").glob("*.yaml"))


def _quick() -> dict:
    return yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())


def _write(tmp_path, data, name="study.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _error(tmp_path, data) -> str:
    p = _write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_study(p)
    msg = str(info.value)
    assert str(p) in msg  # every message names the file
    return msg


def test_packaged_quickstart_is_the_experiments_copy():
    assert (
        default_study_path().read_bytes() == (ROOT / "experiments" / "quickstart.yaml").read_bytes()
    )


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_shipped_studies_load(path):
    study = load_study(path)
    assert study.name == path.stem
    assert study.search.mode in ("optuna", "grid", "multi")


def test_shipped_studies_cover_the_issue():
    studies = {p.stem: load_study(p) for p in EXPERIMENTS}
    modes = {s.search.mode for s in studies.values()}
    assert modes == {"optuna", "grid", "multi"}
    l1 = [s for s in studies.values() if s.search.penalty == "l1" and s.search.mode == "grid"]
    assert any(sorted(s.search.lam) == [0.005, 0.01, 0.02, 0.05, 0.1, 0.2] for s in l1)
    assert any(
        s.search.penalty == "l2l1" and s.search.mode == "grid" and len(s.search.seeds) == 10
        for s in studies.values()
    )
    assert any(len(s.recordings) > 1 for s in studies.values())


def test_defaults_and_keys():
    study = load_study(None)
    assert study.name == "quickstart"
    assert isinstance(study.search.lam, LamRange)
    assert study.recording_keys == ["synthetic-fish"]
    assert study_from_dict(study.to_dict()) == study  # round trip through the dict written to disk


@pytest.mark.parametrize(
    "edit, key, words",
    [
        (lambda d: d["model"].update(n_hiden=3), "model.n_hiden", "unknown key"),
        (lambda d: d.update(extra_section={}), "extra_section", "unknown key"),
        (lambda d: d["resources"].update(cpu="two"), "resources.cpu", "valid number"),
        (lambda d: d["model"].update(n_updates=0), "model.n_updates", "greater than 0"),
        (
            lambda d: d["search"].update(lam={"low": -1.0, "high": 1.0}),
            "search.lam.low",
            "greater than 0",
        ),
        (
            lambda d: d["search"].update(lam={"low": 1.0, "high": 0.1}),
            "search.lam",
            "larger than low",
        ),
        (lambda d: d["search"].update(mode="bayes"), "search.mode", "'optuna', 'grid' or 'multi'"),
        (lambda d: d["search"].update(mode="grid"), "search", "needs lam as a list"),
        (lambda d: d["search"].update(penalty="l2"), "search.penalty", "'l2l1' or 'l1'"),
        (lambda d: d["search"].update(seeds=[1, 1]), "search.seeds", "distinct"),
        (
            lambda d: d["search"].update(points_to_evaluate=[{"lam": 5.0}]),
            "search",
            "points_to_evaluate[0].lam",
        ),
        (lambda d: d["evaluation"].update(report_every=10_000), "<top level>", "report_every"),
        (lambda d: d["recordings"][0].update(path="x.h5"), "recordings.0", "exactly one of"),
        (lambda d: d.pop("search"), "search", "Field required"),
        (
            lambda d: d["preprocessing"].update(n_test_segments=3, test_segments=[1, 2]),
            "preprocessing",
            "test_segments has 2 entries",
        ),
        (lambda d: d.update(name="has space"), "name", "should match pattern"),
    ],
)
def test_bad_values_give_one_clear_message(tmp_path, edit, key, words):
    d = _quick()
    edit(d)
    msg = _error(tmp_path, d)
    assert "1 problem(s)" in msg, msg
    line = msg.splitlines()[1]
    assert line.startswith(f"  - {key}: "), msg
    assert words in line, msg


def test_several_problems_are_all_listed(tmp_path):
    d = _quick()
    d["model"]["n_hiden"] = 3
    d["resources"]["gpu"] = -1
    msg = _error(tmp_path, d)
    assert "2 problem(s)" in msg
    assert "model.n_hiden" in msg and "resources.gpu" in msg


def test_not_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nsearch: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken.yaml is not valid YAML at line"):
        load_study(p)
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(tmp_path / "nope.yaml")
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_study(p)


def test_relative_recording_paths_resolve_against_the_study_file(tmp_path):
    d = _quick()
    d["recordings"] = [{"path": "data/fish1.h5"}, {"path": "data/fish2.h5", "name": "f2"}]
    study = load_study(_write(tmp_path, d))
    assert study.recordings[0].path == str(tmp_path / "data" / "fish1.h5")
    assert study.recording_keys == ["fish1", "f2"]


def test_duplicate_recording_names_rejected(tmp_path):
    d = _quick()
    d["recordings"] = [{"synthetic": {"seed": 1}}, {"synthetic": {"seed": 1, "n_neurons": 50}}]
    msg = _error(tmp_path, d)
    assert "synthetic-1" in msg and "occur twice" in msg
