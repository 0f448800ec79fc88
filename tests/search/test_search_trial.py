"""Pieces of the trial that run without Ray: metric sanitising, the mid-fit model snapshot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch.backend import get_backend
from raysearch.crbm import CRBM
from raysearch.evaluation import evaluate
from raysearch.preprocessing import preprocess
from raysearch.errors import ConfigError
from raysearch.search.trial import METRIC_KEYS, sanitize_metrics
from raysearch.synthetic import make_synthetic_recording


def test_sanitize_metrics_maps_nan_to_inf_and_flags_bad():
    good = {k: 0.5 for k in METRIC_KEYS} | {"bad": False, "lam": 0.1}
    assert sanitize_metrics(good) == good
    out = sanitize_metrics(good | {"nrmse_vv": float("nan"), "sparsity": None})
    assert out["nrmse_vv"] == math.inf and out["sparsity"] == math.inf
    assert out["bad"] is True and out["lam"] == 0.1
    # a non-finite sparsity alone does not make a fit bad (only the nRMSE figures do)
    assert sanitize_metrics(good | {"weight_density": float("nan")})["bad"] is False
    assert all(not math.isnan(v) for v in out.values() if isinstance(v, float))


@pytest.fixture(scope="module")
def dataset():
    rec, _ = make_synthetic_recording(n_neurons=60, n_frames=600, seed=0)
    return preprocess(rec, n_segments=5, n_test_segments=1, test_segments=(2,))


def test_snapshot_at_the_last_boundary_is_the_fitted_model(dataset, tmp_path):
    """CRBM.snapshot, taken in the checkpoint callback of each boundary (as the search trial
    does), equals what fit leaves behind at the final one; earlier ones equal a fit with fewer
    updates' state (resumed from the checkpoint written at that boundary)."""
    path = tmp_path / "ck.h5"
    snaps = []

    def on_boundary(m):
        snaps.append(m.snapshot())                  # as the trial calls it: fit's own frames
        given = m.snapshot(dataset)                 # the same with the frames passed in
        for attr in ("weights_", "hidden_var_"):
            np.testing.assert_array_equal(getattr(given, attr), getattr(snaps[-1], attr))
        if m._state["update"] == 10:
            m.save_checkpoint(path)

    model = CRBM(n_hidden=5, lam=1e-3, n_updates=30, batch_size=50, n_gibbs=2, seed=0,
                 backend="numpy")
    model.fit(dataset, callback_every=10, checkpoint=on_boundary)
    assert [s.n_updates_done_ for s in snaps] == [10, 20, 30]
    assert not np.array_equal(snaps[0].weights_, snaps[2].weights_)
    snap = snaps[-1]
    for attr in ("weights_", "fields_", "gamma_plus_", "gamma_minus_", "theta_plus_",
                 "theta_minus_", "hidden_var_"):
        np.testing.assert_allclose(getattr(snap, attr), getattr(model, attr), rtol=1e-6,
                                   atol=1e-7, err_msg=attr)
    assert snap.n_updates_done_ == 30 and snap.get_params() == model.get_params()
    a = evaluate(snap, dataset, n_chains=20, n_burnin=20, n_samples=5, n_between=5, seed=1)
    b = evaluate(model, dataset, n_chains=20, n_burnin=20, n_samples=5, n_between=5, seed=1)
    assert a.mean_nrmse == pytest.approx(b.mean_nrmse, rel=1e-5)
    # the first snapshot is the model at update 10: its weights are those of the checkpoint
    from raysearch.crbm import training
    from raysearch.crbm.io import read_checkpoint

    st = read_checkpoint(path)
    bk = get_backend("numpy")
    gauged = training.sign_gauge({k: bk.asarray(v) for k, v in st["params"].items()}, bk)
    np.testing.assert_array_equal(snaps[0].weights_, gauged["weights"])
    with pytest.raises(ConfigError, match="pass the training frames"):
        model.snapshot()                            # after fit the frames are not kept
    assert model.snapshot(dataset).n_updates_done_ == 30
    with pytest.raises(ConfigError, match="no training state"):
        CRBM(n_hidden=2).snapshot(dataset)
