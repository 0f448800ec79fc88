"""The compiled CPU kernels (raysearch.crbm.cpu_kernels) against plain NumPy and against known laws.

Products: the sparse kernels equal the dense product (float32 tolerance) on edge cases (empty rows,
dense rows, row lengths not a multiple of 4, non-binary values). Draws: frequencies match p within a
statistical bound, including p = 0, 1 and extreme values; neighbouring draws are uncorrelated; the
stream depends only on (key, b, n). Gibbs: the kernel path of ``training.gibbs`` samples a tiny
model's exact distribution (enumeration), and agrees in law with the generic NumPy path.
"""

import itertools

import numpy as np
import pytest
from scipy import stats

from raysearch.backend import get_backend
from raysearch.crbm import training
from raysearch.crbm import units as U

K = get_backend("numpy").cpu_kernels
pytestmark = pytest.mark.skipif(
    K is None,
    reason="numba is not installed (the 'numba' dependency is missing) or RAYSEARCH_CPU_KERNELS=0",
)


def _sparse(B, N, density, seed, binary=True):
    rng = np.random.default_rng(seed)
    V = (rng.random((B, N)) < density).astype(np.float32)
    if not binary:
        V *= rng.standard_normal((B, N)).astype(np.float32)
    return V


@pytest.mark.parametrize("M", [1, 5, 100])
def test_csr_and_binary_products_equal_dense(M):
    rng = np.random.default_rng(0)
    N = 37
    WT = rng.standard_normal((N, M)).astype(np.float32)
    V = _sparse(9, N, 0.2, 1)
    V[0] = 0  # empty row
    V[1] = 1  # full row (37 ones: 9 blocks of 4 + 1)
    V[2, :3] = 1  # 3 ones: the remainder loop only
    V[2, 3:] = 0
    ptr, idx, val = np.empty(10, np.int64), np.empty(9 * N, np.int32), np.empty(9 * N, np.float32)
    nnz = K.csr_rows(V, ptr, idx, val)
    assert nnz == np.count_nonzero(V) and ptr[-1] == nnz
    for b in range(9):
        np.testing.assert_array_equal(idx[ptr[b] : ptr[b + 1]], np.flatnonzero(V[b]))
    out = np.full((9, M), np.nan, np.float32)
    K.csr_matmul(ptr, idx, None, WT, out)
    np.testing.assert_allclose(out, V.astype(np.float64) @ WT, rtol=1e-5, atol=1e-5)
    Vr = _sparse(9, N, 0.3, 2, binary=False)
    K.csr_rows(Vr, ptr, idx, val)
    K.csr_matmul(ptr, idx, val, WT, out)
    np.testing.assert_allclose(out, Vr.astype(np.float64) @ WT, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("density", [0.0, 0.04, 0.5])
def test_sparse_hidden_inputs_any_density(density):
    """Below DENSE_ABOVE the kernel, above it BLAS: the same numbers either way."""
    rng = np.random.default_rng(3)
    WT = rng.standard_normal((500, 20)).astype(np.float32)
    V = _sparse(30, 500, density, 4, binary=False)
    np.testing.assert_allclose(
        K.sparse_hidden_inputs(V, WT), V.astype(np.float64) @ WT, rtol=1e-4, atol=1e-4
    )


def test_bernoulli_draw_frequencies_and_extremes():
    """400 rows x 12 columns of fixed p (p = 0, 1, 1e-6, 1 - 1e-6, ...): column frequencies within 5
    standard errors (120,000 draws per column); positions of the ones match V."""
    p = np.array([0.0, 1.0, 1e-6, 1 - 1e-6, 0.001, 0.01, 0.04, 0.25, 0.5, 0.75, 0.96, 0.999])
    with np.errstate(divide="ignore", over="ignore"):
        x = np.log(p) - np.log1p(-p)  # logit: -inf .. inf
        E = np.broadcast_to(np.exp(-x).astype(np.float32), (10_000, 12)).copy()
    counts = np.zeros(12)
    n = 0
    for key in range(12):
        V = np.empty_like(E)
        ptr, idx = np.empty(E.shape[0] + 1, np.int64), np.empty(E.size + 8, np.int32)
        nnz = K.bernoulli_draw(E, np.uint64(key * 7919 + 1), V, ptr, idx)
        assert set(np.unique(V)) <= {0.0, 1.0} and nnz == V.sum() == ptr[-1]
        for b in (0, 1, 9_999):
            np.testing.assert_array_equal(idx[ptr[b] : ptr[b + 1]], np.flatnonzero(V[b]))
        counts += V.sum(axis=0)
        n += E.shape[0]
    assert counts[0] == 0 and counts[1] == n
    # every entry one (the compaction's last word is full): no write past B * N + 8; too small a
    # work space is refused
    E1 = np.zeros((3, 13), np.float32)
    V1, ptr1, idx1 = np.empty_like(E1), np.empty(4, np.int64), np.full(3 * 13 + 8, -1, np.int32)
    assert K.bernoulli_draw(E1, np.uint64(1), V1, ptr1, idx1) == 39 and V1.all()
    np.testing.assert_array_equal(idx1[:39], np.tile(np.arange(13), 3))
    with pytest.raises(ValueError, match="B \\* N \\+ 8"):
        K.bernoulli_draw(E1, np.uint64(1), V1, ptr1, idx1[:39])
    freq = counts / n
    se = np.sqrt(p * (1 - p) / n) + 1e-12
    z = (freq - p) / se
    assert np.all(np.abs(z[2:]) < 5), z


def test_bernoulli_draw_stream_is_independent_and_keyed():
    """p = 1/2 everywhere: v(b, n) and its neighbours in n and in b are uncorrelated; the draw is a
    function of (key, b, n) only (same key: same draws; rows drawn separately: same draws)."""
    E = np.ones((400, 1000), np.float32)
    V = np.empty_like(E)
    ptr, idx = np.empty(401, np.int64), np.empty(E.size + 8, np.int32)
    K.bernoulli_draw(E, np.uint64(123), V, ptr, idx)
    s = 2 * V.astype(np.float64) - 1
    n = s.size
    for a, b in ((s[:, 1:], s[:, :-1]), (s[1:], s[:-1]), (s[:, 32:], s[:, :-32])):
        assert abs((a * b).mean()) < 5 / np.sqrt(a.size), (a * b).mean()
    assert abs(s.mean()) < 5 / np.sqrt(n)
    V2 = np.empty_like(E)
    K.bernoulli_draw(E, np.uint64(123), V2, ptr, idx)
    np.testing.assert_array_equal(V, V2)
    K.bernoulli_draw(E, np.uint64(124), V2, ptr, idx)
    assert 0.45 < (V != V2).mean() < 0.55
    # a row's draws depend on (key, row index within the block) only: drawing rows 0..9 alone
    V3 = np.empty((10, 1000), np.float32)
    K.bernoulli_draw(E[:10].copy(), np.uint64(123), V3, ptr, idx)
    np.testing.assert_array_equal(V3, V[:10])


def test_bernoulli_step_returns_draw_and_its_hidden_inputs():
    rng = np.random.default_rng(5)
    N, M = 300, 7
    WT = rng.standard_normal((N, M)).astype(np.float32)
    g = np.full(N, -3.0, np.float32)
    I = rng.standard_normal((20, N)).astype(np.float32)
    V, H = K.bernoulli_step(I.copy(), g, WT, 99)
    assert V.dtype == np.float32 and set(np.unique(V)) <= {0.0, 1.0}
    np.testing.assert_allclose(H, V.astype(np.float64) @ WT, rtol=1e-5, atol=1e-5)
    V2, _ = K.bernoulli_step(I.copy(), g, WT, 99)
    np.testing.assert_array_equal(V, V2)


def _free_energy_probs(p, N):
    bk = get_backend("numpy")
    V = np.array(list(itertools.product([0.0, 1.0], repeat=N)), np.float32)
    F = U.free_energy(
        V, p["weights"], p["fields"], tuple(p[k] for k in training.HIDDEN_KEYS), "bernoulli", bk
    ).astype(np.float64)
    pr = np.exp(-(F - F.min()))
    return pr / pr.sum()


def test_kernel_gibbs_samples_the_exact_distribution():
    """training.gibbs on the kernel path: 30,000 chains of a 5-visible, 3-hidden model, 30 steps;
    the histogram over all 32 states against exp(-F(v))/Z (chi-square), fields chosen so that
    every state has a non-negligible probability."""
    bk = get_backend("numpy")
    assert bk.cpu_kernels is not None
    rng = np.random.default_rng(11)
    N = 5
    p = {
        "weights": (rng.standard_normal((3, N)) * 0.8).astype(np.float32),
        "fields": (rng.standard_normal(N) * 0.5 - 0.5).astype(np.float32),
        "gamma_plus": np.array([1.0, 1.5, 0.8], np.float32),
        "gamma_minus": np.array([1.2, 0.9, 1.1], np.float32),
        "theta_plus": np.array([0.2, -0.3, 0.1], np.float32),
        "theta_minus": np.array([0.1, 0.4, -0.2], np.float32),
    }
    pr = _free_energy_probs(p, N)
    assert pr.min() > 1e-3
    n = 30_000
    V0 = np.zeros((n, N), np.float32)
    v = training.gibbs(p, V0, 30, "bernoulli", bk, bk.rng(3, 0))
    counts = np.bincount(v.astype(int) @ (1 << np.arange(N - 1, -1, -1)), minlength=2**N)
    assert stats.chisquare(counts, pr * n).pvalue > 1e-4, (counts, pr * n)


def test_kernel_and_generic_gibbs_agree_in_law():
    """A 400-visible model at 4% ones: 3,000 chains, 50 steps on each path; per-unit visible means
    and hidden-input means agree within 5 standard errors (different random streams)."""
    bk = get_backend("numpy")
    rng = np.random.default_rng(12)
    N, M = 400, 6
    p = {
        "weights": (rng.standard_normal((M, N)) * 0.15).astype(np.float32),
        "fields": np.full(N, np.log(0.04 / 0.96), np.float32),
        "gamma_plus": np.ones(M, np.float32),
        "gamma_minus": np.ones(M, np.float32),
        "theta_plus": np.zeros(M, np.float32),
        "theta_minus": np.zeros(M, np.float32),
    }
    V0 = (rng.random((3000, N)) < 0.04).astype(np.float32)
    out = []
    for b in (bk, bk.without_cpu_kernels()):
        v = training.gibbs(p, V0, 50, "bernoulli", b, b.rng(4, 0)).astype(np.float64)
        out.append((v, v @ p["weights"].T))
    (va, ia), (vb, ib) = out
    for a, b in ((va, vb), (ia, ib)):
        se = np.sqrt((a.var(axis=0) + b.var(axis=0)) / a.shape[0]) + 1e-9
        z = (a.mean(axis=0) - b.mean(axis=0)) / se
        assert np.abs(z).max() < 5, np.abs(z).max()


# ----------------------------------------------------------------------------------------------
# Vectorisable float32 math and the compiled dReLU sampler
# ----------------------------------------------------------------------------------------------
def _ulps(a, b):
    """Distance in float32 units in the last place between a (float32) and b (float64 exact)."""
    b32 = b.astype(np.float32)
    return np.abs(a.astype(np.float64) - b) / np.spacing(np.abs(b32)).astype(np.float64)


def test_exp32_and_log32_against_numpy_over_the_float32_range():
    x = np.concatenate([np.linspace(-87.3, 88.7, 400001), np.linspace(-2, 2, 100001)]).astype(
        np.float32
    )
    assert np.max(_ulps(K.exp32(x), np.exp(x.astype(np.float64)))) <= 3
    # subnormal results, overflow, specials
    t = np.array(
        [-95.0, -103.0, -104.0, -200.0, 88.8, 1e30, np.inf, -np.inf, np.nan, 0.0], np.float32
    )
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(t.astype(np.float64)).astype(np.float32)
    got = K.exp32(t)
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-3)  # subnormals: absolute grid
    assert got[2] <= 1e-45 and got[3] == 0
    np.testing.assert_array_equal(got[4:], [np.inf, np.inf, np.inf, 0.0, np.nan, 1.0])
    y = np.exp(np.linspace(-87, 88, 400001)).astype(np.float32)
    ref = np.log(y.astype(np.float64))
    far = np.abs(ref) > 0.1  # near log = 0 the error is absolute: check that separately
    assert np.max(_ulps(K.log32(y)[far], ref[far])) <= 3
    assert np.max(np.abs(K.log32(y)[~far] - ref[~far])) <= 2e-8
    s = np.array([1e-40, 1.4e-45, 0.0, np.inf, -1.0, np.nan, 1.0], np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = np.log(s.astype(np.float64))
    got = K.log32(s)
    np.testing.assert_allclose(got[:2], want[:2], rtol=1e-6)
    np.testing.assert_array_equal(got[2:], [-np.inf, np.inf, np.nan, np.nan, 0.0])


def test_ndtri32_against_scipy():
    from scipy.special import ndtri

    p = np.concatenate(
        [np.exp(np.linspace(-103, -1e-7, 300001)), np.linspace(0, 1, 200001)]
    ).astype(np.float32)
    with np.errstate(divide="ignore"):
        want = ndtri(p.astype(np.float64))
    got = K.ndtri32(p)
    big = np.isfinite(want) & (np.abs(want) > 1e-3)
    assert np.max(np.abs(got[big] / want[big] - 1)) < 4e-7
    small = np.isfinite(want) & ~big  # around p = 1/2: absolute error
    assert np.max(np.abs(got[small] - want[small])) < 1e-9
    np.testing.assert_array_equal(
        K.ndtri32(np.array([0.0, 1.0, np.nan], np.float32)), [-np.inf, np.inf, np.nan]
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_compiled_erfcx_is_the_array_code(dtype):
    a = np.abs(np.random.default_rng(0).standard_normal((7, 301)) * 30).astype(dtype)
    a[0, :4] = [0, 1e-30, 1e4, 1e30]
    got = K.rational_erfcx(a, U._ERFCX_POLY, U._ERFCX_K)
    want = U._erfcx_nonneg(a, get_backend("numpy").without_cpu_kernels())
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want)


def _stream_uniforms(key, shape):
    """The kernels' 24-bit uniforms of stream ``key``, recomputed with NumPy's uint64 arithmetic."""
    i = np.arange(1, int(np.prod(shape)) + 1, dtype=np.uint64)
    z = np.uint64(key) + i * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return ((z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)).reshape(shape)


class _GivenUniforms:
    """An rng stand-in whose ``random`` returns given arrays in turn (for the array code)."""

    def __init__(self, *arrays):
        self._arrays = list(arrays)

    def random(self, shape):
        a = self._arrays.pop(0)
        assert a.shape == tuple(shape)
        return a


def test_compiled_drelu_sampler_is_the_array_code_draw_by_draw():
    """With the same uniforms, the compiled sampler gives the array code's draws up to float32
    rounding, in every regime (both branches, far tails handled by Newton, huge inputs)."""
    regimes = np.array(
        [
            (0.0, 1, 1, 0, 0),
            (5.0, 1, 1, 10, 2),
            (0.0, 1, 1, 50, 50),
            (-900.0, 1e3, 0.05, 20, 1e3),
            (1e4, 0.05, 0.05, 0, 0),
            (0.5, 2, 0.5, 1, -1),
            (-3.0, 1, 1, 20, -2),
            (30.0, 1e3, 1e3, 50, 50),
            (-1e4, 1e3, 0.05, 50, -50),
            (4.9, 1, 1, 10, 0),
        ]
    ).T
    n = 3000
    I = np.repeat(regimes[0][None, :], n, axis=0).astype(np.float32)
    I += np.random.default_rng(1).normal(0, 0.3, I.shape).astype(np.float32)
    params = [r.astype(np.float32) for r in regimes[1:]]
    k1, k2 = 0x1234_5678_9ABC_DEF0, 0x0FED_CBA9_8765_4321
    h = K.drelu_sample(I, *params, k1, k2, U._ERFCX_POLY, U._ERFCX_K, U._X_NEWTON, U._NEWTON_STEPS)
    u1, u2 = _stream_uniforms(k1, I.shape), _stream_uniforms(k2, I.shape)
    generic = get_backend("numpy").without_cpu_kernels()
    want = U.drelu_sample(I, *params, generic, _GivenUniforms(u1, u2))
    assert h.dtype == np.float32 and np.all(np.isfinite(h))
    np.testing.assert_array_equal(h > 0, want > 0)  # the same branch everywhere
    np.testing.assert_allclose(h, want, rtol=2e-4, atol=1e-6)
    # the far tail (Newton) was exercised, in both directions
    x_p = (params[2] - I) / np.sqrt(params[0])
    x_m = (I + params[3]) / np.sqrt(params[1])
    x = np.where(h > 0, x_p, x_m)
    assert (x >= U._X_NEWTON).sum() > 1000 and ((x >= U._X_NEWTON) & (h < 0)).any()


def test_units_drelu_sample_uses_the_compiled_sampler():
    """On the NumPy backend units.drelu_sample is the compiled pass, keyed by the rng stream."""
    nb = get_backend("numpy")
    I = np.linspace(-4, 4, 600, dtype=np.float32).reshape(6, 100)
    p = [np.full(100, v, np.float32) for v in (1.0, 2.0, 0.5, -0.5)]
    rng = nb.rng(4, 2)
    k1, k2 = rng.key64(), rng.key64()
    want = K.drelu_sample(I, *p, k1, k2, U._ERFCX_POLY, U._ERFCX_K, U._X_NEWTON, U._NEWTON_STEPS)
    np.testing.assert_array_equal(U.drelu_sample(I, *p, nb, nb.rng(4, 2)), want)
