"""joint: true studies (issue 14): config checks, the joint dataset of a study, per-fish nRMSE."""

import math

import numpy as np
import pytest
from search_helpers import tiny_dict

from raysearch.errors import ConfigError


def _cohort_study(tmp_path, **extra):
    from raysearch.data.cohort import write_synthetic_cohort
    from raysearch.search.config import study_from_dict

    files = write_synthetic_cohort(
        tmp_path / "cohort", n_fish=2, n_neurons=400, n_frames=300, n_shared=2, n_private=1, seed=0
    )
    d = tiny_dict(
        tmp_path,
        recordings=[{"name": f"f{i}", "path": str(p)} for i, p in enumerate(files)],
        preprocessing={
            "voxel_um": 80.0,
            "transform": "zscore",
            "n_segments": 5,
            "n_test_segments": 1,
            "test_segments": [2],
        },
    )
    d.update(joint=True, **extra)
    return study_from_dict(d)


def test_joint_study_config_checks(tmp_path):
    from raysearch.search.config import study_from_dict

    d = tiny_dict(tmp_path)
    d["joint"] = True
    with pytest.raises(ConfigError, match="at least 2 recordings"):
        study_from_dict(d)
    d["recordings"] = [
        {"name": "a", "synthetic": {"n_neurons": 60, "n_frames": 600}},
        {"name": "b", "synthetic": {"n_neurons": 60, "n_frames": 600, "seed": 1}},
    ]
    with pytest.raises(ConfigError, match="voxel_um"):
        study_from_dict(d)
    d["preprocessing"]["voxel_um"] = 50.0
    d["joint_min_fish"] = 3
    with pytest.raises(ConfigError, match="joint_min_fish"):
        study_from_dict(d)
    d["joint_min_fish"] = 2
    assert study_from_dict(d).recording_keys == ["joint"]
    d["joint"] = False
    with pytest.raises(ConfigError, match="joint_min_fish needs joint"):
        study_from_dict(d)


def test_prepare_datasets_builds_one_joint_dataset(tmp_path):
    from raysearch.data.cohort import JointDataset
    from raysearch.search.tuner import prepare_datasets

    study = _cohort_study(tmp_path)
    ds = prepare_datasets(study)
    assert list(ds) == ["joint"]
    jd = ds["joint"]
    assert isinstance(jd, JointDataset) and jd.fish_names == ["f0", "f1"]
    assert jd.visible == "gaussian" and jd.present.all()
    # one fifth of every fish's frames is held out (segment 2 of 5)
    assert np.bincount(jd.fish_test).tolist() == [60, 60]
    assert np.bincount(jd.fish_train).tolist() == [240, 240]


def test_per_fish_metrics(tmp_path):
    from raysearch.crbm import CRBM
    from raysearch.evaluation import evaluate, per_fish_metrics
    from raysearch.search.tuner import prepare_datasets

    jd = prepare_datasets(_cohort_study(tmp_path))["joint"]
    m = CRBM(
        n_hidden=3,
        visible="gaussian",
        lam=1e-3,
        n_updates=30,
        batch_size=50,
        n_gibbs=1,
        seed=0,
        backend="numpy",
    ).fit(jd)
    kw = dict(n_chains=20, n_burnin=10, n_samples=5, n_between=2)
    d = per_fish_metrics(m, jd, kw, 0, "numpy")
    r1 = evaluate(m, jd.fish_dataset(1), seed=0, backend="numpy", **kw)
    assert d["fish1_nrmse_vv"] == pytest.approx(r1.nrmse["vv"], nan_ok=True)
    assert d["fish1_mean_nrmse"] == pytest.approx(r1.mean_nrmse, nan_ok=True)
    assert set(k for k in d if k.startswith("fish0_")) == {
        "fish0_nrmse_v",
        "fish0_nrmse_h",
        "fish0_nrmse_vh",
        "fish0_nrmse_vv",
        "fish0_nrmse_hh",
        "fish0_mean_nrmse",
    }
    from raysearch.evaluation import evaluate_joint, joint_metrics

    ej = evaluate_joint(m, jd, seed=0, backend="numpy", **kw)
    assert ej["fish"]["f1"].nrmse["vv"] == pytest.approx(d["fish1_nrmse_vv"], nan_ok=True)
    assert ej["filled_units"] == {"f0": 0, "f1": 0}
    flat = joint_metrics(ej)
    assert flat["fish0_nrmse_v"] == pytest.approx(d["fish0_nrmse_v"], nan_ok=True)
    assert flat["mean_nrmse"] == pytest.approx(ej["overall"].mean_nrmse, nan_ok=True)
    # a diverged model: NaN per fish, bad
    m.diverged_ = True
    d = per_fish_metrics(m, jd, kw, 0, "numpy")
    assert math.isnan(d["fish0_mean_nrmse"]) and d["bad_any_fish"] is True


def test_joint_study_end_to_end(ray_session, tmp_path):
    """A tiny joint grid through Ray: one row per lambda, recording 'joint', per-fish nRMSE in
    the final report, a loadable model on the common grid."""
    from raysearch.crbm import CRBM
    from raysearch.search import load_results, run_study

    study = _cohort_study(
        tmp_path, search={"mode": "grid", "lam": [1e-3, 1e-2], "seeds": [0], "max_concurrent": 2}
    )
    run = run_study(study)
    assert run.num_errors == 0
    df = load_results(run.experiment_dir)
    assert len(df) == 2 and (df["recording"] == "joint").all() and df["finished"].all()
    assert {"fish0_mean_nrmse", "fish1_mean_nrmse", "bad_any_fish"} <= set(df.columns), sorted(
        df.columns
    )
    m = CRBM.load(df["model_path"].iloc[0])
    from raysearch.search.tuner import prepare_datasets

    assert m.weights_.shape[1] == prepare_datasets(study)["joint"].n_units
