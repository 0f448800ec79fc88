"""Figures are drawn from analysis results, headless, without pyplot."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "analysis"))

from raysearch import plots  # noqa: E402


def test_individual_figures_draw():
    rng = np.random.default_rng(0)
    stats = {"v": {"test": rng.random(10), "model": rng.random(10)},
             "vv": {"test": rng.random(20), "model": rng.random(20)}}
    fig = plots.identity_figure(stats, "x")
    assert len(fig.axes) == 2
    res = pd.DataFrame({"lam": [1e-3, 1e-2, 1e-1, 1.0], "bad": [False, False, True, None],
                        **{c: rng.random(4) for c in plots.NRMSE_COLUMNS + ("mean_nrmse",)}})
    assert sum(ax.get_visible() for ax in plots.nrmse_vs_lambda(res).axes) == 6
    fig = plots.bad_share_vs_lambda(res, n_bins=3)
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    assert heights == [0.0, 0.0, 0.5]  # bins: {1e-3}, {1e-2}, {1e-1, 1} with one bad of two
    C = rng.random((50, 3)) * 100
    member = np.zeros((4, 50), bool)
    member[0, :5] = True
    fig = plots.assembly_maps(C, member)
    assert len(fig.axes) == 2
    # all-grey background + one coloured assembly per view
    assert all(len(ax.collections) == 2 for ax in fig.axes)


def test_figures_of_an_analysis(tmp_path, small_dataset):
    from analysis_helpers import family_specs, make_experiment

    from raysearch.analysis import analyze

    ds, _ = small_dataset
    specs = family_specs(np.random.default_rng(0), ds.n_units, per_family=3)
    a = analyze(make_experiment(tmp_path / "study", specs, ds), region_models=2)
    paths = plots.save_figures(a, tmp_path / "figs")
    assert set(paths) == {"identity_best", "identity_bad", "nrmse_vs_lambda",
                          "bad_share_vs_lambda", "region_couplings", "similarity", "pca",
                          "assemblies"}
    for p in paths.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_dataset():
    from raysearch.preprocessing import preprocess
    from raysearch.synthetic import make_synthetic_recording

    rec, gt = make_synthetic_recording(n_neurons=200, n_frames=1000, seed=0)
    return preprocess(rec), gt
