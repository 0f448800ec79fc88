"""End-to-end searches on the shared local Ray instance (tiny studies, a few seconds each)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import h5py
import numpy as np
import optuna
import pandas as pd
import pytest
from search_helpers import tiny_dict, tiny_study

from raysearch.cli import main
from raysearch.crbm import CRBM
from raysearch.errors import ConfigError, InputError
from raysearch.evaluation import nrmse_from_rmse
from raysearch.search import load_results, load_study, run_study, study_from_dict
from raysearch.search.monitoring import DIVERGED_VALUE
from raysearch.search.results import COLUMNS, pareto_mask
from raysearch.verdicts import BAD_REASONS

NRMSE = ["nrmse_v", "nrmse_h", "nrmse_vh", "nrmse_vv", "nrmse_hh"]


def _optuna_trials(run, name="tiny"):
    storage = f"sqlite:///{run.experiment_dir}/optuna.db"
    return optuna.load_study(study_name=name, storage=storage).trials


def test_optuna_study_end_to_end(ray_session, tmp_path):
    """The packaged quickstart study, shrunk to tiny sizes: one row per trial, finite metrics,
    loadable model files, every trial COMPLETE in Optuna."""
    quick = load_study(None).to_dict()
    tiny = tiny_dict(tmp_path)
    for key in ("recordings", "preprocessing", "model", "evaluation", "run"):
        quick[key] = tiny[key]
    quick["name"] = "tiny"
    # 400 updates and lambda <= 1e-2: trained enough that every statistic is well conditioned
    # (40-update fits have hh RMSE_shuf ~ RMSE_opt: nRMSE NaN, i.e. bad, by design)
    quick["model"]["n_updates"] = 400
    quick["evaluation"]["report_every"] = 100
    # a final evaluation precise enough to tell these fits from chance (with the tiny study's 40
    # chains x 10 samples every nRMSE has a noise of ~0.25 and each fit is, honestly, bad)
    quick["evaluation"]["final"] = {
        "n_chains": 200,
        "n_burnin": 50,
        "n_samples": 20,
        "n_between": 5,
    }
    quick["search"].update(
        num_samples=3, lam={"low": 1e-4, "high": 1e-2}, points_to_evaluate=[{"lam": 0.003}]
    )
    study = study_from_dict(quick)
    assert study.search.mode == "optuna" and study.search.penalty == "l2l1"
    run = run_study(study)
    df = run.results
    assert run.num_errors == 0
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert len(df) == 3 and df["trial_id"].is_unique
    assert (df["status"] == "TERMINATED").all() and df["finished"].all()
    assert np.isfinite(df[["sparsity", "weight_density"]].to_numpy(float)).all()
    # changed on purpose (issue 12): the objectives are over the assessable statistics (an
    # unassessable one reports NaN), and inf for a bad fit, whose reason is given
    vals = df[NRMSE].to_numpy(float)
    skip = np.array(
        [
            [s in str(u).split(",") for s in ("v", "h", "vh", "vv", "hh")]
            for u in df["unassessable"].fillna("")
        ]
    )
    assert (np.isnan(vals) == skip).all()
    good = ~df["bad"].astype(bool).to_numpy()
    assert (df["bad_reason"].astype(str).str.len().to_numpy() > 0).tolist() == (~good).tolist()
    assert np.isinf(df.loc[~good, "max_nrmse"]).all()
    assert np.allclose(df["mean_nrmse"][good], np.nanmean(vals, axis=1)[good], rtol=1e-6)
    assert np.allclose(df["max_nrmse"][good], np.nanmax(vals, axis=1)[good], rtol=1e-6)
    assert (df["updates"] == 400).all() and (df["n_hidden"] == 5).all()
    assert (df["penalty"] == "l2l1").all() and (df["recording"] == "fish").all()
    assert df["lam"].between(1e-4, 1e-2).all() and np.isclose(df["lam"], 0.003).any()
    for row in df.itertuples():
        model = CRBM.load(row.model_path)
        assert model.weights_.shape[0] == 5 and np.isfinite(model.weights_).all()
        assert math.isclose(model.lam, row.lam) and model.n_updates_done_ == 400
        with h5py.File(row.model_path, "r") as f:
            assert "units" in f and "coords" in f["units"]
            ev = f["evaluation"]
            assert ev.attrs["mean_nrmse"] == pytest.approx(row.mean_nrmse)
            for stat in ("v", "h", "vh", "vv", "hh"):
                assert set(ev[stat]) >= {"train", "test", "model"}
                # the nRMSE parts in the results table: they rebuild the nRMSE, and come from the
                # statistic vectors stored in the model file
                parts = [getattr(row, f"rmse_{p}_{stat}") for p in ("model", "opt", "shuf")]
                if stat not in str(row.unassessable).split(","):
                    assert getattr(row, f"nrmse_{stat}") == pytest.approx(nrmse_from_rmse(*parts))
                t, m = ev[stat]["test"][()], ev[stat]["model"][()]
                assert parts[0] == pytest.approx(float(np.sqrt(np.mean((t - m) ** 2))), rel=1e-5)
    # the Optuna study in the experiment dir holds every trial, COMPLETE, with the final value
    trials = _optuna_trials(run)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert sorted(t.params["lam"] for t in trials) == pytest.approx(sorted(df["lam"]))
    # the study's objective: the default, the worst nRMSE
    assert study.search.objective == "max_nrmse"
    assert not df["bad"].all()
    # Optuna holds the reported objective, DIVERGED_VALUE for a bad fit (whose objective is inf)
    expected = np.where(np.isfinite(df["max_nrmse"]), df["max_nrmse"], DIVERGED_VALUE)
    assert sorted(t.value for t in trials) == pytest.approx(sorted(expected))
    assert trials[0].params["lam"] == pytest.approx(0.003)  # points_to_evaluate ran first
    # history: one row per report, updates every 100, the last one final
    hist = load_results(run.experiment_dir, history=True)
    for _, h in hist.groupby("trial_id"):
        assert h["updates"].tolist() == [100, 200, 300, 400]
        assert h["final"].tolist() == [False, False, False, True]


def test_grid_gives_exactly_the_grid(ray_session, tmp_path):
    recordings = [
        {"name": "fish", "synthetic": {"n_neurons": 60, "n_frames": 600, "seed": 0}},
        {"name": "fish2", "synthetic": {"n_neurons": 50, "n_frames": 600, "seed": 1}},
    ]
    study = tiny_study(
        tmp_path,
        name="grid",
        recordings=recordings,
        search={"mode": "grid", "lam": [0.001, 0.1], "seeds": [3, 4]},
    )
    df = run_study(study).results
    got = sorted(zip(df["lam"], df["seed"], df["recording"]))
    assert got == sorted(itertools.product([0.001, 0.1], [3, 4], ["fish", "fish2"]))
    assert df["finished"].all()
    # changed on purpose (issue 12.1): bad is raysearch.verdicts' rule, with its reason, and the
    # objective of a bad fit is inf (40 updates are too few for some fits)
    bad = df["bad"].astype(bool)
    assert (bad == (df["bad_reason"].astype(str) != "")).all()
    assert set(df.loc[bad, "bad_reason"]) <= set(BAD_REASONS)
    assert np.isinf(df.loc[bad, "max_nrmse"]).all() and np.isfinite(df.loc[~bad, "max_nrmse"]).all()
    # each trial trained on its own recording (the two fish have different neuron counts)
    n_vis = {r.recording: CRBM.load(r.model_path).weights_.shape[1] for r in df.itertuples()}
    assert n_vis["fish"] != n_vis["fish2"]
    # the results CLI: table and exports from the files alone
    csv, pq = tmp_path / "t.csv", tmp_path / "t.parquet"
    assert main(["results", str(df.attrs["experiment_dir"]), "--csv", str(csv)]) == 0
    assert main(["results", str(df.attrs["experiment_dir"]), "--parquet", str(pq)]) == 0
    back = pd.read_csv(csv)
    assert list(back["trial_id"]) == list(df["trial_id"])
    assert np.allclose(back["mean_nrmse"], df["mean_nrmse"], equal_nan=True)
    assert pd.read_parquet(pq)["lam"].tolist() == df["lam"].tolist()


def test_divergence_is_a_finished_bad_trial_and_optuna_goes_on(ray_session, tmp_path):
    """A learning rate of 1e30 makes every fit diverge: trials finish flagged bad, Optuna gets a
    finite stand-in for inf (not NaN, which would leave its trials RUNNING, nor inf, which its
    plots drop; raysearch.search.monitoring.DIVERGED_VALUE) and keeps proposing."""
    study = tiny_study(tmp_path, name="diverge", model={"learning_rate": 1e30})
    run = run_study(study)
    df = run.results
    assert run.num_errors == 0 and len(df) == 3
    assert (df["status"] == "TERMINATED").all() and df["bad"].all()
    assert np.isinf(df["mean_nrmse"]).all() and (df["updates"] < 40).all()
    assert all(CRBM.load(p).diverged_ for p in df["model_path"])
    trials = _optuna_trials(run, "diverge")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    from raysearch.search.monitoring import DIVERGED_VALUE

    assert all(t.value == DIVERGED_VALUE for t in trials)
    assert all(
        t.user_attrs["objective_reported"] == "inf" and t.user_attrs["bad"] is True for t in trials
    )


def test_asha_and_searched_n_hidden(ray_session, tmp_path):
    """ASHA may stop trials at a rung (their last report is then their result, no model file);
    every trial still ends TERMINATED and COMPLETE in Optuna; n_hidden is searched."""
    study = tiny_study(
        tmp_path,
        name="asha",
        search={
            "num_samples": 4,
            "n_hidden": [4, 6],
            "asha": {"grace_updates": 10, "reduction_factor": 2},
        },
    )
    run = run_study(study)
    df = run.results
    assert run.num_errors == 0 and len(df) == 4
    assert (df["status"] == "TERMINATED").all() and set(df["n_hidden"]) <= {4, 6}
    assert (df["finished"] == (df["updates"] == 40)).all()
    for r in df[df["finished"]].itertuples():
        assert CRBM.load(r.model_path).weights_.shape[0] == r.n_hidden
    trials = _optuna_trials(run, "asha")
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
    assert sorted(t.params["n_hidden"] for t in trials) == sorted(df["n_hidden"])


def test_multi_objective_study_marks_the_pareto_front(ray_session, tmp_path):
    # 300 updates and lambda <= 1e-2: the fits learn something (40-update fits have vv nRMSE
    # ~1.01 +- noise, so whether any is usable would be a coin flip)
    study = tiny_study(
        tmp_path,
        name="multi",
        model={"n_updates": 300},
        evaluation={
            "report_every": 100,
            "final": {"n_chains": 200, "n_burnin": 50, "n_samples": 20, "n_between": 5},
        },
        search={"mode": "multi", "num_samples": 4, "lam": {"low": 1e-4, "high": 1e-2}},
    )
    run = run_study(study)
    df = run.results
    assert len(df) == 4 and df["pareto"].any()
    # The front is taken over the usable fits (finished, not bad): a bad model is never on it and
    # never pushes a good one off it.
    usable = (df["finished"] & ~df["bad"].fillna(True).astype(bool)).to_numpy()
    assert not np.any(df["pareto"].to_numpy() & ~usable)
    a, b = df[study.search.objective].to_numpy(), df["weight_density"].to_numpy()
    for i in np.flatnonzero(df["pareto"]):  # nothing usable dominates a point on the front
        assert not np.any(usable & (a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i])))
    for i in np.flatnonzero(usable & ~df["pareto"].to_numpy()):  # a usable fit off it is dominated
        assert np.any(usable & (a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i])))
    trials = _optuna_trials(run, "multi")
    assert all(len(t.values) == 2 for t in trials) and len(trials) == 4


def test_pareto_mask_known_answer():
    a = np.array([1.0, 2.0, 3.0, 2.0, np.inf, 0.5])
    b = np.array([3.0, 2.0, 1.0, 2.5, 0.0, 3.0])
    assert pareto_mask(a, b).tolist() == [False, True, True, False, False, True]


def test_existing_experiment_is_not_overwritten(ray_session, tmp_path):
    study = tiny_study(tmp_path, name="twice", search={"num_samples": 1})
    run_study(study)
    with pytest.raises(ConfigError, match="raysearch resume"):
        run_study(study)


def test_load_results_errors(tmp_path):
    with pytest.raises(InputError, match="not a directory"):
        load_results(tmp_path / "missing")
    with pytest.raises(InputError, match="no Ray Tune trials"):
        load_results(tmp_path)
    assert main(["results", str(tmp_path)]) == 2


def test_load_results_needs_no_ray(ray_session, tmp_path):
    """load_results in a fresh interpreter never imports ray."""
    run = run_study(tiny_study(tmp_path, name="noray", search={"num_samples": 1}))
    code = (
        "import sys, json; from raysearch.search.results import load_results; "
        f"df = load_results({run.experiment_dir!r}); "
        "print(json.dumps([len(df), 'ray' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [1, False]


def test_storage_uri(ray_session, tmp_path, caplog):
    """Results can go to a storage URI (here file://); the model files and study.yaml go there too
    through pyarrow's filesystem layer, and the Optuna storage must then be given explicitly."""
    study = tiny_study(tmp_path, name="uri", search={"mode": "grid", "lam": [0.01]})
    uri = f"file://{tmp_path / 'remote'}"
    with pytest.raises(ConfigError, match="optuna_storage"):
        run_study(tiny_study(tmp_path, name="uri-optuna"), storage=uri)
    assert not (tmp_path / "remote" / "uri-optuna").exists()  # refused before anything started
    run = run_study(study, storage=uri)
    assert run.experiment_dir == f"{uri}/uri" and run.num_errors == 0
    local = tmp_path / "remote" / "uri"
    df = load_results(local)
    assert len(df) == 1 and df["finished"].all() and (local / "study.yaml").is_file()
    assert CRBM.load(df["model_path"][0]).n_updates_done_ == 40
    from raysearch.search.tuner import repair_checkpoints  # a resume's first step, on a URI

    assert repair_checkpoints(run.experiment_dir) == []
    assert "could not read the experiment state" not in caplog.text


def test_failed_trial_is_error_in_tune_and_fail_in_optuna(ray_session, tmp_path):
    """A trial that raises (batch larger than its recording's training frames) ends ERROR in Tune
    and FAIL in Optuna; the other trial completes. Also: points_to_evaluate naming recordings."""
    recordings = [
        {"name": "fish", "synthetic": {"n_neurons": 60, "n_frames": 600, "seed": 0}},
        {"name": "short", "synthetic": {"n_neurons": 60, "n_frames": 150, "seed": 1}},
    ]
    study = tiny_study(
        tmp_path,
        name="fails",
        recordings=recordings,
        model={"batch_size": 200},
        run={"max_failures": 0},
        search={
            "num_samples": 2,
            "points_to_evaluate": [
                {"lam": 0.01, "recording": "fish"},
                {"lam": 0.02, "recording": "short"},
            ],
        },
    )
    run = run_study(study)
    df = run.results.set_index("recording")
    assert run.num_errors == 1
    assert df.loc["fish", "status"] == "TERMINATED" and df.loc["fish", "finished"]
    assert df.loc["short", "status"] == "ERROR" and not df.loc["short", "finished"]
    states = {t.params["recording"]: t.state for t in _optuna_trials(run, "fails")}
    assert states == {
        "fish": optuna.trial.TrialState.COMPLETE,
        "short": optuna.trial.TrialState.FAIL,
    }


def test_trial_runs_one_chain_thread_per_cpu(ray_session, tmp_path):
    """resources.cpu = 2 on the NumPy backend: the trial's CRBM advances its chains in two threads
    (n_jobs = 2, recorded in the model file like every setting)."""
    study = tiny_study(
        tmp_path,
        name="cpu2",
        search={"mode": "grid", "lam": [0.01]},
        resources={"cpu": 2, "gpu": 0},
    )
    run = run_study(study)
    assert run.num_errors == 0
    df = load_results(run.experiment_dir)
    assert len(df) == 1
    assert CRBM.load(df["model_path"][0]).n_jobs == 2


def test_history_includes_reports_kept_before_a_resume(tmp_path):
    """A trial that Tune restarted without a recorded checkpoint: the reports kept by the resume
    (result.pre-resume-<k>.json) come first in its history, rows redone after an older
    checkpoint are not counted twice, and the row of the trial is its last report."""
    exp = tmp_path / "study"
    tdir = exp / "crbm_trial_abcde_00000_0_lam=0.01"
    tdir.mkdir(parents=True)
    (exp / "study.yaml").write_text("name: study\n")
    (tdir / "params.json").write_text(json.dumps({"lam": 0.01, "seed": 0}))

    def rows(updates, first_iteration=1):
        return "".join(
            json.dumps(
                {
                    "trial_id": "abcde_00000",
                    "updates": u,
                    "mean_nrmse": u / 1e4,
                    "training_iteration": first_iteration + i,
                }
            )
            + "\n"
            for i, u in enumerate(updates)
        )

    (tdir / "result.pre-resume-1.json").write_text(rows([100, 200, 300]))
    (tdir / "result.pre-resume-2.json").write_text(rows([300, 400]))  # resumed at 200
    (tdir / "result.json").write_text(rows([500, 600]))  # resumed at 400
    hist = load_results(exp, history=True)
    assert hist["updates"].tolist() == [100, 200, 300, 400, 500, 600]
    df = load_results(exp)
    assert df["updates"].tolist() == [600] and df["n_reports"].tolist() == [6]
