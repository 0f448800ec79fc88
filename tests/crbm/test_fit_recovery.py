"""End to end on the synthetic fish: planted assemblies are recovered and held-out statistics match.

N = 300 neurons, T = 1500 frames, 4 planted assemblies of 8 neurons (the generator's defaults for
this N); 3000 updates of 5 Gibbs steps (about 10 s on one core). The thresholds are issue 3's:
mean best |cosine| >= 0.9 and held-out nRMSE of v and vv < 0.3.
"""

import numpy as np
import pytest

from raysearch.crbm import CRBM


@pytest.fixture(scope="module")
def fish():
    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    rec, truth = make_synthetic_recording(n_neurons=300, n_frames=1500, seed=0)
    ds = preprocess(rec)
    model = CRBM(
        n_hidden=8, lam=0.003, penalty="l2l1", n_updates=3000, n_gibbs=5, seed=0, backend="numpy"
    ).fit(ds)
    return ds, truth, model


def best_abs_cosine(truth_weights, W):
    G = truth_weights / np.linalg.norm(truth_weights, axis=1, keepdims=True)
    H = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    return np.abs(G @ H.T).max(axis=1)


def test_planted_assemblies_are_recovered(fish):
    ds, truth, model = fish
    assert not model.diverged_
    assert truth.n_assemblies == 4
    cos = best_abs_cosine(truth.weights, model.weights_)
    assert cos.mean() >= 0.9, cos
    # the assembly units put their weight on the members: the best unit's 8 largest weights
    for k in range(truth.n_assemblies):
        mu = np.argmax(np.abs(model.weights_ @ truth.weights[k]))
        top = np.argsort(-np.abs(model.weights_[mu]))[: truth.membership[k].sum()]
        assert truth.membership[k, top].mean() >= 0.75


def test_held_out_statistics(fish):
    from raysearch.evaluation import evaluate

    ds, _, model = fish
    res = evaluate(model, ds, n_chains=200, n_burnin=500, n_samples=30, n_between=10, seed=0)
    assert res.nrmse["v"] < 0.3, res.nrmse
    assert res.nrmse["vv"] < 0.3, res.nrmse
    assert not res.bad


def test_random_data_gives_no_assemblies():
    """Negative control: the same fit on data with the planted structure destroyed (each neuron's
    frames shuffled independently) finds nothing that matches the assemblies."""
    from raysearch.data.synthetic import make_synthetic_recording

    rec, truth = make_synthetic_recording(n_neurons=300, n_frames=1500, seed=0)
    rng = np.random.default_rng(0)
    X = rec.spikes.astype(np.float32)
    X = np.stack([rng.permutation(col) for col in X.T], axis=1)
    model = CRBM(n_hidden=8, lam=0.003, n_updates=1000, n_gibbs=5, seed=0, backend="numpy").fit(X)
    assert best_abs_cosine(truth.weights, model.weights_).mean() < 0.5
