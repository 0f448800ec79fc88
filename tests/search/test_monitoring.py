"""raysearch.search.monitoring: what a user sees of a running study.

The unit tests pin each piece (labels, job metadata, the Optuna searcher's values and user
attributes, the console lines, the loggers). ``test_study_seen_from_dashboard_metrics_console``
runs a tiny study on a new local Ray instance with the dashboard and token auth on (in a
subprocess, tests/search/monitoring_probe.py) and checks it through the dashboard's Jobs and
State APIs, the node's Prometheus endpoint, the captured console and the Optuna storage.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from search_helpers import tiny_dict

from raysearch.search import monitoring as mon

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


# ------------------------------------------------------------------------------------ helpers
_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)\{(?P<labels>.*)\}\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(lines) -> list[tuple[str, dict, float]]:
    """(name, labels, value) of every sample line with labels."""
    out = []
    for ln in lines:
        m = _LINE.match(ln.strip())
        if m:
            out.append((m["name"], dict(_LABEL.findall(m["labels"])), float(m["value"])))
    return out


def test_parse_prometheus_known_lines():
    got = parse_prometheus(['ray_x{a="1",lam="0.001"} 3.5', 'ray_y{b="q"} +Inf', "# HELP x"])
    assert got == [("ray_x", {"a": "1", "lam": "0.001"}, 3.5), ("ray_y", {"b": "q"}, math.inf)]


# ------------------------------------------------------------------------------ unit: labels
def test_trial_label_and_job_metadata(tmp_path):
    assert (
        mon.trial_label({"lam": 0.00123456, "seed": 3, "recording": "fish"}, "ab_00001")
        == "crbm_trial(ab_00001, lam=0.001235, seed=3, recording=fish)"
    )
    assert mon.trial_label({}) == "crbm_trial()"
    from raysearch.search.config import study_from_dict

    study = study_from_dict(tiny_dict(tmp_path))
    md = mon.job_metadata(study, "/x/tiny")
    assert md == {
        "job_name": "raysearch tiny",
        "raysearch_study": "tiny",
        "raysearch_mode": "optuna",
        "raysearch_experiment_dir": "/x/tiny",
    }
    assert all(isinstance(v, str) for v in md.values())  # Ray requires string values


def test_named_trainable_keeps_the_trainable_name_and_labels_instances():
    from ray import tune

    def crbm_trial(config, datasets=None):
        return None

    cls = mon.named_trainable(tune.with_parameters(crbm_trial, datasets={"a": 1}))
    assert cls.__name__ == "crbm_trial"  # Tuner.restore compares trainable names
    from ray.tune.trainable.function_trainable import FunctionTrainable

    assert issubclass(cls, FunctionTrainable)
    fake = SimpleNamespace(config={"lam": 0.5, "seed": 1}, trial_id="t_1")
    assert cls.__repr__(fake) == "crbm_trial(t_1, lam=0.5, seed=1)"
    # built as in build_tuner: the resources of with_resources survive the naming
    cls = mon.named_trainable(
        tune.with_resources(tune.with_parameters(crbm_trial, datasets={}), {"cpu": 2, "gpu": 0})
    )
    assert cls.__name__ == cls.__qualname__ == "crbm_trial"
    assert cls.default_resource_request({}).required_resources == {"CPU": 2.0}


def test_run_study_passes_job_metadata_to_ray(tmp_path, monkeypatch):
    from raysearch.search import tuner
    from raysearch.search.config import study_from_dict

    seen = {}

    class Stop(Exception):
        pass

    def fake_connect(address=None, num_cpus=None, metadata=None):
        seen["metadata"] = metadata
        raise Stop

    monkeypatch.setattr(tuner, "connect_ray", fake_connect)
    monkeypatch.setattr(tuner, "prepare_datasets", lambda study: {})
    study = study_from_dict(tiny_dict(tmp_path))
    with pytest.raises(Stop):
        tuner.run_study(study)
    assert seen["metadata"] == mon.job_metadata(study, tuner.experiment_dir(study))


# ---------------------------------------------------------------------------- unit: Optuna
def _searcher(tmp_path, metric="mean_nrmse", mode="min"):
    import optuna
    from ray import tune

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    s = mon.MonitoredOptunaSearch(
        space={"lam": tune.loguniform(1e-4, 1.0)},
        metric=metric,
        mode=mode,
        storage=storage,
        study_name="st",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    return s, storage


def _result(value, bad, **extra):
    return {
        "mean_nrmse": value,
        "bad": bad,
        "seed": 0,
        "recording": "fish",
        "nrmse_v": 0.1,
        "nrmse_h": value,
        "nrmse_vh": 0.2,
        "nrmse_vv": 0.3,
        "nrmse_hh": 0.4,
        "weight_density": 0.25,
        "updates": 40,
        "model_path": "/m/x.h5",
        **extra,
    }


def test_optuna_search_tells_diverged_value_and_writes_user_attrs(tmp_path):
    import optuna

    s, storage = _searcher(tmp_path)
    for tid in ("t1", "t2", "t3", "t4"):
        assert "lam" in s.suggest(tid)
    s.on_trial_result("t1", {"mean_nrmse": math.inf, "training_iteration": 1})
    s.on_trial_complete("t1", _result(math.inf, True, bad_reason="diverged"))
    s.on_trial_complete("t2", _result(math.nan, True))
    s.on_trial_complete("t3", _result(0.25, False))
    s.on_trial_complete("t4", None, error=True)
    study = optuna.load_study(study_name="st", storage=storage)
    assert study.metric_names == ["mean_nrmse"]
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]
    assert [t.value for t in trials[:3]] == [mon.DIVERGED_VALUE, mon.DIVERGED_VALUE, 0.25]
    assert trials[0].intermediate_values == {1: mon.DIVERGED_VALUE}
    a0, a1, a2 = (t.user_attrs for t in trials[:3])
    assert a0["tune_trial_id"] == "t1" and a0["bad"] is True and a0["bad_reason"] == "diverged"
    assert a0["objective_reported"] == "inf" and a0["nrmse_h"] == "inf"
    assert "bad_reason" not in a1 and a1["objective_reported"] == "nan"  # absent column: absent
    assert a2 == {
        "tune_trial_id": "t3",
        "seed": 0,
        "recording": "fish",
        "nrmse_v": 0.1,
        "nrmse_h": 0.25,
        "nrmse_vh": 0.2,
        "nrmse_vv": 0.3,
        "nrmse_hh": 0.4,
        "mean_nrmse": 0.25,
        "bad": False,
        "weight_density": 0.25,
        "updates": 40,
        "model_path": "/m/x.h5",
        "objective_reported": 0.25,
    }
    df = study.trials_dataframe()
    assert {"user_attrs_tune_trial_id", "user_attrs_bad", "user_attrs_nrmse_vv"} <= set(df)


def test_plain_optuna_search_leaves_nan_trials_running(tmp_path):
    """Why the subclass exists: Ray's OptunaSearch leaves a NaN trial RUNNING."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'p.db'}")
    s = OptunaSearch(
        space={"lam": tune.loguniform(1e-4, 1.0)},
        metric="mean_nrmse",
        mode="min",
        storage=storage,
        study_name="p",
    )
    s.suggest("a")
    s.on_trial_complete("a", {"mean_nrmse": math.nan})
    assert optuna.load_study(study_name="p", storage=storage).trials[0].state.name == "RUNNING"


def test_optuna_search_multi_objective(tmp_path):
    import optuna

    s, storage = _searcher(tmp_path, metric=["mean_nrmse", "weight_density"], mode=["min", "min"])
    s.suggest("a")
    s.on_trial_complete("a", _result(math.inf, True) | {"weight_density": math.nan})
    study = optuna.load_study(study_name="st", storage=storage)
    assert study.metric_names == ["mean_nrmse", "weight_density"]
    assert study.trials[0].values == [mon.DIVERGED_VALUE, mon.DIVERGED_VALUE]


# --------------------------------------------------------------------------- unit: console
def test_finished_trial_line_one_line():
    cb = mon.FinishedTrialLine("mean_nrmse")
    trial = SimpleNamespace(
        trial_id="ab_1",
        config={"lam": 0.001, "seed": 2},
        last_result={"mean_nrmse": 0.1234567, "bad": False, "updates": 40, "seconds": 12.34},
    )
    assert cb.line(trial) == (
        "Trial ab_1 finished: lam=0.001 seed=2 mean_nrmse=0.1235 bad=False updates=40 12.3 s"
    )
    trial.last_result = {
        "mean_nrmse": math.inf,
        "bad": True,
        "bad_reason": "diverged",
        "updates": 7,
    }
    assert cb.line(trial) == (
        "Trial ab_1 finished: lam=0.001 seed=2 mean_nrmse=inf bad=True (diverged) updates=7"
    )


def test_progress_reporter_columns():
    r = mon.progress_reporter("max_nrmse")
    assert list(r._metric_columns) == ["max_nrmse", "bad", "updates"]
    assert list(r._parameter_columns) == ["lam", "seed", "recording"]
    assert "weight_density" in mon.progress_reporter("mean_nrmse", multi=True)._metric_columns


def test_tensorboard_off_by_default_on_with_env(monkeypatch):
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    monkeypatch.delenv(mon.TENSORBOARD_ENV, raising=False)
    cbs = mon.logger_callbacks()
    assert [type(c) for c in cbs] == [CSVLoggerCallback, JsonLoggerCallback, mon.TensorBoardOff]
    assert isinstance(cbs[2], TBXLoggerCallback)  # so Tune adds no TensorBoard logger itself
    pytest.importorskip("tensorboardX")
    monkeypatch.setenv(mon.TENSORBOARD_ENV, "1")
    assert type(mon.logger_callbacks()[2]) is TBXLoggerCallback


def test_next_steps_and_cli_message(tmp_path, capsys):
    lines = mon.next_steps("/r/q", "sqlite:////r/q/optuna.db")
    assert lines[0] == "Results are in /r/q"
    assert any(ln.strip().startswith("raysearch results /r/q") for ln in lines)
    assert any(ln.strip().startswith("raysearch analyze /r/q") for ln in lines)
    assert any(ln.strip().startswith("optuna-dashboard sqlite:////r/q/optuna.db") for ln in lines)
    assert not any("optuna-dashboard" in ln for ln in mon.next_steps("/r/q"))


def test_export_trial_metrics_outside_ray_is_silent():
    assert mon.export_trial_metrics({"lam": 0.1, "updates": 10}) is None


# -------------------------------------------------------------------- integration (real Ray)
@pytest.mark.slow
def test_study_seen_from_dashboard_metrics_console(tmp_path):
    """A tiny study on a local Ray with dashboard and token: Jobs/State API, Prometheus,
    console, Optuna."""
    import optuna

    from raysearch.search import load_results

    d = tiny_dict(
        tmp_path,
        name="monitored",
        search={"num_samples": 2, "max_concurrent": 1},
        run={"verbose": 1, "max_failures": 0, "reuse_actors": False},
    )
    d["run"]["storage_path"] = str(tmp_path / "results")
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump(d))
    out_json = tmp_path / "probe.json"
    env = dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        RAY_metrics_report_interval_ms="1000",
        PYTHONPATH=str(ROOT),
    )
    env.pop("RAY_AUTH_MODE", None)  # Ray's default: token auth on
    env.pop(mon.TENSORBOARD_ENV, None)
    proc = subprocess.run(
        [sys.executable, str(HERE / "monitoring_probe.py"), str(study_file), str(out_json)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    console = proc.stdout
    (tmp_path / "console.txt").write_text(proc.stdout + proc.stderr)  # for a failing run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(out_json.read_text())
    assert got["rc"] == 0
    exp_dir = got["experiment_dir"]
    df = load_results(exp_dir)
    assert len(df) == 2 and set(df["status"]) == {"TERMINATED"}
    objective = d["search"].get("objective", df.attrs["study"]["search"]["objective"])

    # --- Jobs API: the driver job carries the study; the API refuses requests without token
    assert got["token"] and got["noauth_status"] == 401 and got["jobs_status"] == 200
    mine = [
        j
        for j in got["jobs"]
        if j["driver_info"] and j["metadata"].get("raysearch_study") == "monitored"
    ]
    assert len(mine) == 1
    assert mine[0]["metadata"] == {
        "job_name": "raysearch monitored",
        "raysearch_study": "monitored",
        "raysearch_mode": "optuna",
        "raysearch_experiment_dir": exp_dir,
    }

    # --- State API: one actor per trial (reuse_actors off), labelled with its trial and lambda
    assert got["actors_status"] == 200
    actors = [
        a for a in got["actors"]["data"]["result"]["result"] if a["class_name"] == "crbm_trial"
    ]
    labels = sorted(a["repr_name"] for a in actors)
    want = sorted(
        mon.trial_label(
            {
                "lam": float(r.lam),
                "seed": int(r.seed),
                "recording": r.recording,
                "n_hidden": int(r.n_hidden),
            },
            r.trial_id,
        )
        for r in df.itertuples()
    )
    assert labels == want
    tasks = [
        t for t in got["tasks"]["data"]["result"]["result"] if t["name"].startswith("crbm_trial(")
    ]
    assert {t["name"].rsplit(".", 1)[0] for t in tasks} <= set(want)

    # --- Prometheus: the final values of every trial, tagged with study, trial id and lambda
    samples = parse_prometheus(got["scraped"])
    for r in df.itertuples():
        tags = {"study": "monitored", "trial_id": r.trial_id, "lam": f"{float(r.lam):.4g}"}

        def values(name, extra=None):
            return [
                v
                for n, lab, v in samples
                if n == name and all(lab.get(k) == x for k, x in (tags | (extra or {})).items())  # noqa: B023
            ]

        assert float(r.updates) in values("ray_raysearch_trial_updates"), r.trial_id
        assert float(bool(r.bad)) in values("ray_raysearch_trial_bad")
        obj = mon.finite_value(getattr(r, objective))  # non-finite: DIVERGED_VALUE
        assert any(
            abs(v - obj) <= 1e-9 * abs(obj) for v in values("ray_raysearch_trial_objective")
        ), (obj, r.trial_id)
        for s in mon.STAT_NAMES:
            want_v = mon.finite_value(getattr(r, f"nrmse_{s}"))
            vals = values("ray_raysearch_trial_nrmse", {"statistic": s})
            assert any(abs(v - want_v) <= 1e-9 * abs(want_v) for v in vals), (s, want_v, vals)
        spu = values("ray_raysearch_trial_seconds_per_update")
        assert spu and all(v > 0 for v in spu)

    # --- console: the objective/bad/updates table, one line per finished trial, no boxes,
    # no TensorBoard, and the next commands at the end
    assert re.search(rf"\|\s*lam\s*\|.*\|\s*{objective}\s*\|\s*bad\s*\|\s*updates\s*\|", console)
    finished = [ln for ln in console.splitlines() if re.match(r"^Trial \S+ finished: ", ln)]
    assert len(finished) == 2
    assert "╭" not in console and "result:" not in console.lower().replace("last result", "")
    assert "tensorboard" not in (console + proc.stderr).lower()
    assert "Checkpoint successfully created" not in console + proc.stderr
    assert not list(Path(exp_dir).rglob("events.out.tfevents*"))
    assert f"raysearch results {exp_dir}" in console
    assert f"raysearch analyze {exp_dir}" in console
    assert f"optuna-dashboard sqlite:///{exp_dir}/optuna.db" in console

    # --- Optuna: named objective, user attributes, every trial COMPLETE with a finite value
    study = optuna.load_study(study_name="monitored", storage=f"sqlite:///{exp_dir}/optuna.db")
    assert study.metric_names == [objective]
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert set(by_tune_id) == set(df["trial_id"])
    for r in df.itertuples():
        t = by_tune_id[r.trial_id]
        assert t.state.name == "COMPLETE" and math.isfinite(t.value)
        obj = float(getattr(r, objective))
        assert t.value == (obj if math.isfinite(obj) else mon.DIVERGED_VALUE)
        assert t.user_attrs["bad"] == bool(r.bad) and t.user_attrs["model_path"] == r.model_path
        assert t.user_attrs["seed"] == int(r.seed) and t.user_attrs["recording"] == r.recording
        for s in mon.STAT_NAMES:
            assert f"nrmse_{s}" in t.user_attrs
