"""On real (tiny) cRBM fits of the synthetic fish, region couplings follow the planted ones."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from raysearch.analysis import analyze, region_couplings


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from analysis_helpers import make_experiment

    from raysearch.crbm import CRBM
    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    rec, gt = make_synthetic_recording(n_neurons=400, n_frames=2000, n_assemblies=8, seed=0)
    ds = preprocess(rec)
    specs = []
    for seed in (0, 1):
        m = CRBM(n_hidden=12, lam=0.005, n_updates=200, seed=seed, backend="numpy").fit(ds)
        specs.append(
            {
                "W": m.weights_,
                "c": m.hidden_var_,
                "lam": 0.005,
                "seed": seed,
                "mean_nrmse": 0.3 + 0.1 * seed,
            }
        )
    exp = make_experiment(tmp_path_factory.mktemp("fits") / "study", specs, ds)
    return exp, specs, ds, gt


def test_region_couplings_follow_planted(fitted):
    exp, specs, ds, gt = fitted
    R = len(ds.region_names)
    iu = np.triu_indices(R)
    planted = gt.region_coupling[iu]
    for s in specs:
        JR = region_couplings(s["W"], s["c"], ds.unit_region, n_regions=R)[iu]
        ok = np.isfinite(JR)
        rho = spearmanr(JR[ok], planted[ok]).statistic
        assert rho > 0.3, rho
        # region pairs that share a planted assembly couple far more strongly than others
        on, off = np.nanmean(JR[planted > 0]), np.nanmean(JR[planted == 0])
        assert on > 10 * off, (on, off)


def test_analyze_on_fits(fitted):
    exp, specs, ds, gt = fitted
    a = analyze(exp)
    assert a.similarity.method == "exact"
    # two seeds of the same lambda find similar couplings
    assert a.similarity.pearson[0, 1] > 0.3
    assert len(a.region_couplings) == 2
    # consistency of the two seeds' region matrices (log10 Pearson)
    assert a.region_consistency.iloc[0, 1] > 0.5
    # assemblies of the best model are small and few-region, like the planted ones
    t = a.assemblies.table
    big = t[t["size"] > 0]
    assert len(big) > 0 and big["n_regions"].median() <= 3
