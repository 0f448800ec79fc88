"""Low-rank coupling statistics and model similarity against dense computations."""

import numpy as np
import pytest

from raysearch.analysis import LowRankCouplings, offdiag_stats, similarity_matrix
from raysearch.errors import ConfigError, InputError


def _models(rng, n=120, sizes=(6, 9, 6, 7, 9), shift=0.0):
    base = rng.normal(size=(6, n)) * (rng.random((6, n)) < 0.3)
    out = []
    for m in sizes:
        W = 0.4 * rng.normal(size=(m, n)) + shift
        W[:6] += base
        out.append((W, rng.random(m) + 0.2))
    return out


def _dense_offdiag(models):
    n = models[0][0].shape[1]
    iu = np.triu_indices(n, 1)
    return np.stack([LowRankCouplings.from_factors(W, c).dense()[iu] for W, c in models])


def test_dense_couplings_match_definition():
    rng = np.random.default_rng(0)
    W, c = rng.normal(size=(5, 30)), rng.random(5)
    J = LowRankCouplings.from_factors(W, c).dense()
    ref = W.T @ np.diag(c) @ W
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(J, ref, rtol=1e-12, atol=1e-12)
    blk = LowRankCouplings.from_factors(W, c).rows(3, 9)
    np.testing.assert_allclose(blk, ref[3:9], rtol=1e-12, atol=1e-12)


def test_offdiag_stats_match_dense():
    rng = np.random.default_rng(1)
    W, c = rng.normal(size=(7, 50)) + 0.3, rng.random(7)
    J = LowRankCouplings.from_factors(W, c).dense()
    off = J[~np.eye(50, dtype=bool)]
    st = offdiag_stats(W, c)
    assert st["n_pairs"] == off.size
    np.testing.assert_allclose(st["sum"], off.sum(), rtol=1e-10)
    np.testing.assert_allclose(st["sumsq"], (off**2).sum(), rtol=1e-10)
    np.testing.assert_allclose(st["var"], off.var(), rtol=1e-8)


@pytest.mark.parametrize("block_bytes", [1, 2 * 9 * 120 * 8, 10**9])
@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_exact_similarity_equals_dense(block_bytes, shift):
    """Pearson and cosine over i<j from M x M products equal the dense ones to 1e-6 relative,
    with blocks of 1, 2 and all models (variable M, non-zero mean couplings)."""
    rng = np.random.default_rng(2)
    models = _models(rng, shift=shift)
    X = _dense_offdiag(models)
    pear = np.corrcoef(X)
    G = X @ X.T
    cos = G / np.sqrt(np.outer(np.diag(G), np.diag(G)))
    s = similarity_matrix(models, method="exact", block_bytes=block_bytes)
    assert s.method == "exact"
    np.testing.assert_allclose(s.pearson, pear, rtol=1e-6, atol=0)
    np.testing.assert_allclose(s.cosine, cos, rtol=1e-6, atol=0)
    np.testing.assert_allclose(s.mean, X.mean(1), rtol=1e-6)
    np.testing.assert_allclose(s.std, X.std(1), rtol=1e-6)
    # not trivially 1: the models differ
    assert pear[~np.eye(len(pear), dtype=bool)].max() < 0.99


def test_float32_exact_close():
    rng = np.random.default_rng(3)
    models = _models(rng)
    ref = np.corrcoef(_dense_offdiag(models))
    s = similarity_matrix(models, method="exact", dtype=np.float32)
    np.testing.assert_allclose(s.pearson, ref, rtol=1e-4)


def test_sketch_estimates_similarity():
    """The sketch route is an estimate: its error shrinks with the sketch length."""
    rng = np.random.default_rng(4)
    models = _models(rng, n=200, shift=0.2)
    X = _dense_offdiag(models)
    pear = np.corrcoef(X)
    errs = {}
    for dim in (2**10, 2**16):
        s = similarity_matrix(models, method="sketch", sketch_dim=dim, seed=1)
        assert s.method == "sketch"
        errs[dim] = np.abs(s.pearson - pear).max()
        np.testing.assert_allclose(s.mean, X.mean(1), rtol=1e-5)
    assert errs[2**16] < 0.02
    assert errs[2**16] < errs[2**10]


def test_auto_picks_exact_for_small():
    rng = np.random.default_rng(5)
    assert similarity_matrix(_models(rng), method="auto").method == "exact"


def test_bad_inputs():
    rng = np.random.default_rng(6)
    with pytest.raises(ConfigError):
        similarity_matrix(_models(rng), method="dense")
    with pytest.raises(InputError, match="visible units"):
        similarity_matrix(
            [(rng.normal(size=(3, 10)), np.ones(3)), (rng.normal(size=(3, 11)), np.ones(3))]
        )
    with pytest.raises(InputError, match="hidden_var"):
        similarity_matrix([(rng.normal(size=(3, 10)), np.ones(4))])
    W = rng.normal(size=(3, 10))
    W[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        similarity_matrix([(W, np.ones(3))])
    with pytest.raises(InputError):
        similarity_matrix([])


def test_matplotlib_not_imported_by_analysis():
    import subprocess
    import sys

    code = (
        "import sys, raysearch.analysis as a; a.similarity_matrix; "
        "assert 'matplotlib' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
