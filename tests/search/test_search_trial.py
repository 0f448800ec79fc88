"""Pieces of the trial that run without Ray: metric sanitising, the mid-fit model snapshot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raysearch.backend import get_backend
from raysearch.crbm import CRBM
from raysearch.evaluation import evaluate
from raysearch.preprocessing import preprocess
from raysearch.search.trial import METRIC_KEYS, sanitize_metrics, snapshot_model
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
    """A snapshot built from the checkpoint of the final boundary equals what fit leaves behind."""
    bk = get_backend("numpy")
    path = tmp_path / "ck.h5"
    model = CRBM(n_hidden=5, lam=1e-3, n_updates=30, batch_size=50, n_gibbs=2, seed=0,
                 backend="numpy")
    model.fit(dataset, callback_every=10, checkpoint=lambda m: m.save_checkpoint(path))
    snap = snapshot_model(model, str(path), dataset, bk)
    for attr in ("weights_", "fields_", "gamma_plus_", "gamma_minus_", "theta_plus_",
                 "theta_minus_", "hidden_var_"):
        np.testing.assert_allclose(getattr(snap, attr), getattr(model, attr), rtol=1e-6,
                                   atol=1e-7, err_msg=attr)
    assert snap.n_updates_done_ == 30 and snap.get_params() == model.get_params()
    a = evaluate(snap, dataset, n_chains=20, n_burnin=20, n_samples=5, n_between=5, seed=1)
    b = evaluate(model, dataset, n_chains=20, n_burnin=20, n_samples=5, n_between=5, seed=1)
    assert a.mean_nrmse == pytest.approx(b.mean_nrmse, rel=1e-5)
