"""analyze(DIR) on experiment directories (synthetic models written as model files)."""

import numpy as np
import pytest
from analysis_helpers import family_specs, make_experiment
from sklearn.metrics import adjusted_rand_score

from raysearch.analysis import analyze
from raysearch.errors import InputError


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, small_dataset):
    ds, gt = small_dataset
    rng = np.random.default_rng(0)
    specs = family_specs(rng, ds.n_units)
    exp = make_experiment(tmp_path_factory.mktemp("exp") / "study", specs, ds)
    return exp, specs, ds, gt


def test_analyze_family_dir(family_dir):
    exp, specs, ds, gt = family_dir
    a = analyze(exp, region_models=3)
    assert len(a.trial_ids) == len(specs)
    fam = np.array([specs[int(t.split("_")[1])]["family"] for t in a.trial_ids])
    assert adjusted_rand_score(fam, a.embedding.labels) == 1.0
    # the cluster table relates clusters to lambda: one cluster per lambda range, bad in family 1
    t = a.clusters.sort_values("lam_min").reset_index(drop=True)
    assert len(t) == 2
    assert t.loc[0, "lam_max"] < t.loc[1, "lam_min"]
    assert t.loc[0, "n_bad"] == 0 and t.loc[1, "n_bad"] == 1
    # regions: 3 best + the bad one, consistent shapes, names from /units
    assert a.region_names == list(ds.region_names)
    assert len(a.region_couplings) == 4
    R = len(ds.region_names)
    assert all(m.shape == (R, R) for m in a.region_couplings.values())
    assert a.region_consistency.shape == (4, 4)
    # identity stats for best and bad, assemblies of the best model
    assert set(a.identity) == {"best", "bad"}
    best_tid = a.identity["best"][0]
    assert specs[int(best_tid.split("_")[1])]["mean_nrmse"] == min(
        s["mean_nrmse"] for s in specs if not s["bad"]
    )
    assert a.identity["bad"][0] == "abcde_00004"
    assert a.assemblies.membership.shape == (8, ds.n_units)
    assert a.coords.shape == (ds.n_units, 3)
    assert set(a.tables()) >= {"models", "clusters", "similarity_pearson", "assemblies"}


def test_structural_comparison(family_dir, tmp_path):
    import pandas as pd

    exp, specs, ds, gt = family_dir
    csv = tmp_path / "structural.csv"
    pd.DataFrame(gt.structural, index=ds.region_names, columns=ds.region_names).to_csv(csv)
    a = analyze(exp, structural=csv, region_models=1)
    assert list(a.structural.columns) == ["trial_id", "spearman", "n_entries"]
    assert a.structural["n_entries"].iloc[0] > 3


def test_no_model_files(tmp_path, small_dataset):
    ds, _ = small_dataset
    rng = np.random.default_rng(1)
    exp = make_experiment(
        tmp_path / "study", family_specs(rng, ds.n_units, per_family=1), ds, with_models=False
    )
    with pytest.raises(InputError, match="no finished trial with a model file"):
        analyze(exp)


def test_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Ray Tune trials|no trials"):
        analyze(tmp_path / "empty")
    with pytest.raises(InputError):
        analyze(tmp_path / "missing")


def test_two_recordings(tmp_path, small_dataset):
    """Neuron-level similarity within the largest recording group; region level across both."""
    ds, _ = small_dataset
    rng = np.random.default_rng(3)
    specs = family_specs(rng, ds.n_units, per_family=3)
    for i, s in enumerate(specs):
        s["recording"] = "fishA" if i < 4 else "fishB"
    a = analyze(make_experiment(tmp_path / "study", specs, ds), region_models=6)
    assert len(a.trial_ids) == 4
    assert any("largest recording group" in n for n in a.notes)
    assert (a.results["cluster"] == -1).sum() == 2
    rc = a.recording_consistency
    assert list(rc.index) == ["fishA", "fishB"] and rc.shape == (2, 2)
    assert np.isfinite(rc.loc["fishA", "fishB"])


def test_collapsed_and_diverged_models(tmp_path, small_dataset):
    """A model with all-zero weights (constant couplings) is kept with a note; a diverged one
    (diverged attr set) is left out with a note; NaN weights give a clear error naming the file."""
    import h5py

    ds, _ = small_dataset
    rng = np.random.default_rng(4)
    specs = family_specs(rng, ds.n_units, per_family=2)
    specs[1]["W"] = np.zeros_like(specs[1]["W"])
    exp = make_experiment(tmp_path / "study", specs, ds)
    a = analyze(exp)
    assert len(a.trial_ids) == 4
    assert np.isnan(a.similarity.pearson[a.trial_ids.index("abcde_00001")]).all()
    assert any("constant couplings" in n for n in a.notes)
    with h5py.File(exp / "models" / "abcde_00002.h5", "a") as f:
        f.attrs["diverged"] = True
    a = analyze(exp)
    assert "abcde_00002" not in a.trial_ids and len(a.trial_ids) == 3
    assert any("diverged" in n for n in a.notes)
    with h5py.File(exp / "models" / "abcde_00003.h5", "a") as f:
        f["weights"][0, 0] = np.nan
    with pytest.raises(InputError, match="abcde_00003.h5 has NaN"):
        analyze(exp)


@pytest.mark.parametrize("n_models", [1, 2])
def test_tiny_studies(tmp_path, small_dataset, n_models):
    from raysearch.report import write_report

    ds, _ = small_dataset
    specs = family_specs(np.random.default_rng(5), ds.n_units, per_family=1)[:n_models]
    a = analyze(make_experiment(tmp_path / "study", specs, ds))
    assert len(a.trial_ids) == n_models and a.embedding.n_clusters == 1
    assert set(a.identity) == ({"best"} if n_models == 1 else {"best", "bad"})
    html = write_report(a, tmp_path / "out").read_text()
    assert "id='fig-pca'" in html and "id='fig-similarity'" in html


def test_auto_switches_to_sketch_for_large_studies(family_dir, monkeypatch):
    import raysearch.analysis.similarity as simmod

    exp, specs, ds, gt = family_dir
    monkeypatch.setattr(simmod, "AUTO_EXACT_MAX_MACS", 0)
    a = analyze(exp, region_models=1)
    assert a.similarity.method == "sketch"
    assert any("TensorSketch" in n for n in a.notes)
    fam = np.array([specs[int(t.split("_")[1])]["family"] for t in a.trial_ids])
    assert adjusted_rand_score(fam, a.embedding.labels) == 1.0
