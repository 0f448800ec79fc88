"""Unit layers against known answers: numerical integration over h (scipy quad, float64), finite
differences, analytic sampling distributions, and brute-force enumeration of a tiny model.

Every test runs on every backend (numpy, strict, cupy where available) through the ``backend``
fixture; on CuPy the float32 results are also compared with NumPy's.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, special, stats

from raysearch.backend import get_backend
from raysearch.crbm import units as U

# ----------------------------------------------------------------------------------------------
# Reference: moments of P(h|I) ∝ exp(-U(h) + I h) by quadrature, float64
# ----------------------------------------------------------------------------------------------


def _potential(h, gp, gm, tp, tm):
    return 0.5 * gp * h * h + tp * h if h >= 0 else 0.5 * gm * h * h - tm * h


def quad_reference(I, gp, gm, tp, tm):
    """(Gamma, mean, var, E[h+], E[h+^2], E[h-], E[h-^2]) by quadrature of each branch."""
    sp, sm = 1 / math.sqrt(gp), 1 / math.sqrt(gm)
    hp, hm = max((I - tp) / gp, 0.0), min((I + tm) / gm, 0.0)  # branch modes

    def logf(h):
        return -_potential(h, gp, gm, tp, tm) + I * h

    c = max(logf(hp), logf(hm))  # common scale
    h0 = hp if logf(hp) >= logf(hm) else hm  # moments about h0
    out = {}
    with warnings.catch_warnings():  # quad's roundoff notes on negligible branches
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        for name, lo, hi, mode in (
            ("+", max(0.0, hp - 40 * sp), hp + 40 * sp, hp),
            ("-", hm - 40 * sm, min(0.0, hm + 40 * sm), hm),
        ):
            pts = [mode] if lo < mode < hi else None
            out[name] = [
                integrate.quad(
                    lambda h, k=k: (h - h0) ** k * math.exp(logf(h) - c),
                    lo,
                    hi,
                    points=pts,
                    epsabs=0,
                    epsrel=1e-11,
                    limit=500,
                )[0]
                for k in range(3)
            ]
    Z = out["+"][0] + out["-"][0]
    d1 = (out["+"][1] + out["-"][1]) / Z
    mean = h0 + d1
    var = (out["+"][2] + out["-"][2]) / Z - d1 * d1

    def branch(b):  # E[h_b], E[h_b^2] with h_b the branch part, from moments about h0
        z0, z1, z2 = out[b]
        return (z1 + h0 * z0) / Z, (z2 + 2 * h0 * z1 + h0 * h0 * z0) / Z

    (ep, ep2), (em, em2) = branch("+"), branch("-")
    return c + math.log(Z), mean, var, ep, ep2, em, em2


ORDINARY = [  # (gp, gm, tp, tm)
    (1.0, 1.0, 0.0, 0.0),
    (2.0, 0.5, 1.0, -1.0),
    (0.3, 3.0, -1.0, 2.0),
    (1.0, 1.0, 2.0, 2.0),
]
ORDINARY_I = [-3.0, -0.5, 0.0, 0.7, 4.0]
EXTREME = [  # extremes of gp, gm in [0.05, 1e3], tp, tm in [-50, 50], |I| up to 1e4
    (0.05, 0.05, 0.0, 0.0),
    (1e3, 1e3, 50.0, 50.0),
    (1e3, 0.05, -50.0, 50.0),
    (0.05, 1e3, 50.0, -50.0),
    (1e3, 1e3, -50.0, -50.0),
    (0.05, 0.05, 50.0, 50.0),
]
EXTREME_I = [-1e4, -300.0, -49.0, 0.0, 45.0, 300.0, 1e4]


def _cases():
    return [(I, *p) for p in ORDINARY for I in ORDINARY_I] + [
        (I, *p) for p in EXTREME for I in EXTREME_I
    ]


def _columns(cases, bk, dtype=np.float32):
    """Cases as hidden units: I (1, K), gp, gm, tp, tm (K,)."""
    a = np.array(cases, dtype=np.float64).T
    return [bk.asarray(a[0][None, :], dtype)] + [bk.asarray(a[k], dtype) for k in range(1, 5)]


@pytest.fixture(scope="module")
def reference():
    cases = _cases()
    return cases, np.array([quad_reference(*c) for c in cases])


def test_cgf_mean_var_against_quadrature(backend, reference):
    cases, ref = reference
    I, gp, gm, tp, tm = _columns(cases, backend)
    cgf = backend.to_numpy(U.drelu_cgf(I, gp, gm, tp, tm, backend))[0]
    mean, var = (backend.to_numpy(a)[0] for a in U.drelu_mean_var(I, gp, gm, tp, tm, backend))
    mean_only = backend.to_numpy(U.drelu_mean(I, gp, gm, tp, tm, backend))[0]
    for a in (cgf, mean, var):
        assert a.dtype == np.float32 and np.all(np.isfinite(a))
    r_cgf, r_mean, r_var = ref[:, 0], ref[:, 1], ref[:, 2]
    sd = np.sqrt(r_var)
    # float32: relative accuracy ~1e-6 of each quantity's own scale
    np.testing.assert_allclose(cgf, r_cgf, rtol=3e-6, atol=3e-5)
    assert np.all(np.abs(mean - r_mean) <= 2e-6 * np.abs(r_mean) + 1e-4 * sd), np.c_[
        cases, mean, r_mean
    ][np.abs(mean - r_mean) > 2e-6 * np.abs(r_mean) + 1e-4 * sd]
    np.testing.assert_allclose(mean_only, mean, rtol=1e-6, atol=1e-6 * sd.max())
    np.testing.assert_allclose(var, r_var, rtol=2e-5)


def test_branch_moments_against_quadrature(backend, reference):
    cases, ref = reference
    I, gp, gm, tp, tm = _columns(cases, backend)
    moments = [backend.to_numpy(a)[0] for a in U.drelu_branch_moments(I, gp, gm, tp, tm, backend)]
    sd, r_mean = np.sqrt(ref[:, 2]), np.abs(ref[:, 1])
    for got, want, power in zip(moments, ref[:, 3:].T, (1, 2, 1, 2)):
        assert np.all(np.isfinite(got))
        scale = (r_mean + sd) ** power
        assert np.all(np.abs(got - want) <= 1e-4 * scale + 1e-30), np.c_[cases, got, want]
    ep, ep2, em, em2 = moments
    assert np.all(ep >= 0) and np.all(em <= 0) and np.all(ep2 >= 0) and np.all(em2 >= 0)


def test_derivatives_of_cgf_are_mean_and_var(backend):
    """Gamma' = E[h|I] and Gamma'' = Var[h|I] by central differences (float64 evaluation)."""
    cases = [c for c in _cases() if abs(c[0]) < 1e3]
    I, gp, gm, tp, tm = _columns(cases, backend, np.float64)
    eps = 1e-4

    def f(fn, shift):
        return backend.to_numpy(fn(I + shift, gp, gm, tp, tm, backend))[0]

    mean, var = (backend.to_numpy(a)[0] for a in U.drelu_mean_var(I, gp, gm, tp, tm, backend))
    d1 = (f(U.drelu_cgf, eps) - f(U.drelu_cgf, -eps)) / (2 * eps)
    d2 = (f(U.drelu_mean, eps) - f(U.drelu_mean, -eps)) / (2 * eps)
    np.testing.assert_allclose(d1, mean, rtol=1e-5, atol=1e-5 * np.sqrt(var).max())
    np.testing.assert_allclose(d2, var, rtol=1e-4, atol=1e-9)


def test_no_nan_or_inf_for_huge_inputs(backend):
    rng = np.random.default_rng(0)
    K = 400
    I = np.concatenate([np.linspace(-1e4, 1e4, 201), rng.uniform(-1e4, 1e4, K - 201)])[None, :]
    g = np.exp(rng.uniform(np.log(0.05), np.log(1e3), (2, K)))
    t = rng.uniform(-50, 50, (2, K))
    args = [backend.asarray(a) for a in (I, g[0], g[1], t[0], t[1])]
    outs = [
        U.drelu_cgf(*args, backend),
        *U.drelu_mean_var(*args, backend),
        *U.drelu_branch_moments(*args, backend),
        U.drelu_sample(*args, backend, backend.rng(0, 1)),
    ]
    for o in outs:
        o = backend.to_numpy(o)
        assert o.shape == (1, K) and np.all(np.isfinite(o))
    assert np.all(backend.to_numpy(outs[2]) > 0)  # variance


def test_sampler_distribution_is_exact(backend):
    """Branch frequencies match p+ (binomial bound); within each branch, the exceedance
    e = |h| sqrt(g) of the truncated normal maps through its exact survival function to U(0,1)
    (Kolmogorov-Smirnov), including far-tail regimes where Phi(-x) underflows float32."""
    regimes = [  # (I, gp, gm, tp, tm)
        (0.0, 1.0, 1.0, 0.0, 0.0),
        (0.5, 2.0, 0.5, 1.0, -1.0),
        (-3.0, 1.0, 1.0, 20.0, -2.0),
        (5.0, 1.0, 1.0, 10.0, 2.0),  # both branches in tails (x+ = 5, x- = 7)
        (30.0, 1e3, 1e3, 50.0, 50.0),  # x+ = 0.63, x- = 2.5
        (0.0, 1.0, 1.0, 50.0, 50.0),  # x = 50: far tail, Newton sampler, p+ = 1/2
        (-900.0, 1e3, 0.05, 20.0, 1e3),  # x+ = 29, x- = 447
        (2.0, 4.0, 4.0, 0.0, 3.0),
    ]
    n = 40000
    a = np.array(regimes).T
    I = backend.asarray(np.repeat(a[0][None, :], n, axis=0))
    gp, gm, tp, tm = (backend.asarray(a[k]) for k in range(1, 5))
    h = backend.to_numpy(U.drelu_sample(I, gp, gm, tp, tm, backend, backend.rng(11, 3)))
    assert h.dtype == np.float32 and np.all(np.isfinite(h))
    for k, (i_, gp_, gm_, tp_, tm_) in enumerate(regimes):
        xp_, xm_ = (tp_ - i_) / math.sqrt(gp_), (i_ + tm_) / math.sqrt(gm_)
        lzp = special.log_ndtr(-xp_) - stats.norm.logpdf(xp_) - 0.5 * math.log(gp_)
        lzm = special.log_ndtr(-xm_) - stats.norm.logpdf(xm_) - 0.5 * math.log(gm_)
        p_plus = special.expit(lzp - lzm)
        col = h[:, k]
        pos = col > 0
        frac = pos.mean()
        assert abs(frac - p_plus) <= 5 * math.sqrt(p_plus * (1 - p_plus) / n) + 1e-4, (
            k,
            frac,
            p_plus,
        )
        for mask, x, g, sign in ((pos, xp_, gp_, 1.0), (~pos, xm_, gm_, -1.0)):
            if mask.sum() < 200:
                continue
            e = sign * col[mask].astype(np.float64) * math.sqrt(g)
            surv = np.exp(special.log_ndtr(-(x + e)) - special.log_ndtr(-x))
            p = stats.kstest(surv, "uniform").pvalue
            assert p > 1e-4, (k, sign, p)


def test_sampler_moments_far_tail_and_huge_inputs(backend):
    """Mean and variance of many draws vs the analytic moments, 5-sigma bounds."""
    regimes = [
        (1e4, 0.05, 0.05, 0.0, 0.0),
        (-1e4, 1e3, 0.05, 50.0, -50.0),
        (0.0, 1.0, 1.0, 50.0, 50.0),
        (60.0, 1.0, 1.0, 50.0, -50.0),
        (0.0, 1e3, 1e3, -50.0, 50.0),
    ]
    n = 40000
    a = np.array(regimes).T
    I = backend.asarray(np.repeat(a[0][None, :], n, axis=0))
    gp, gm, tp, tm = (backend.asarray(a[k]) for k in range(1, 5))
    h = backend.to_numpy(U.drelu_sample(I, gp, gm, tp, tm, backend, backend.rng(5))).astype(
        np.float64
    )
    mean, var = (
        backend.to_numpy(x)[0].astype(np.float64)
        for x in U.drelu_mean_var(I[:1], gp, gm, tp, tm, backend)
    )
    for k in range(len(regimes)):
        assert abs(h[:, k].mean() - mean[k]) <= 5 * math.sqrt(var[k] / n) + 1e-6 * abs(mean[k]), k
        c = h[:, k] - h[:, k].mean()
        se_var = math.sqrt(max(np.mean(c**4) - var[k] ** 2, 0) / n)
        assert abs(np.mean(c**2) - var[k]) <= 5 * se_var + 1e-4 * var[k], k


def test_sampler_is_deterministic_per_stream(backend):
    I = backend.asarray(np.linspace(-5, 5, 60).reshape(3, 20))
    p = [backend.asarray(np.full(20, v)) for v in (1.0, 2.0, 0.5, -0.5)]
    a = backend.to_numpy(U.drelu_sample(I, *p, backend, backend.rng(1, 2, 3)))
    b = backend.to_numpy(U.drelu_sample(I, *p, backend, backend.rng(1, 2, 3)))
    c = backend.to_numpy(U.drelu_sample(I, *p, backend, backend.rng(1, 2, 4)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ----------------------------------------------------------------------------------------------
# Visible layers
# ----------------------------------------------------------------------------------------------


def test_bernoulli_layer(backend):
    x = np.linspace(-30, 30, 61)
    I = backend.asarray(np.vstack([x, -x]))
    g = backend.asarray(np.linspace(-1, 1, 61))
    xg = np.vstack([x, -x]) + np.linspace(-1, 1, 61).astype(np.float32)
    cgf = backend.to_numpy(U.bernoulli_cgf(I, g, backend))
    np.testing.assert_allclose(cgf, np.log1p(np.exp(xg)), rtol=1e-6, atol=1e-7)
    mean = backend.to_numpy(U.bernoulli_mean(I, g, backend))
    np.testing.assert_allclose(mean, special.expit(xg), rtol=1e-6, atol=1e-7)
    # mean = d cgf / dI (float64 central differences)
    I64, g64 = (
        backend.asarray(np.vstack([x, -x]), np.float64),
        backend.asarray(np.linspace(-1, 1, 61), np.float64),
    )
    d = (
        backend.to_numpy(U.bernoulli_cgf(I64 + 1e-5, g64, backend))
        - backend.to_numpy(U.bernoulli_cgf(I64 - 1e-5, g64, backend))
    ) / 2e-5
    np.testing.assert_allclose(d, backend.to_numpy(U.bernoulli_mean(I64, g64, backend)), atol=1e-8)
    # samples: 0/1 float32, frequency matches the mean (5 sigma)
    n = 20000
    p_true = np.array([0.02, 0.3, 0.5, 0.9, 0.999])
    Ib = backend.asarray(np.zeros((n, 5)))
    s = backend.to_numpy(
        U.bernoulli_sample(Ib, backend.asarray(special.logit(p_true)), backend, backend.rng(4))
    )
    assert s.dtype == np.float32 and set(np.unique(s)) <= {0.0, 1.0}
    assert np.all(np.abs(s.mean(0) - p_true) <= 5 * np.sqrt(p_true * (1 - p_true) / n) + 1e-6)
    # extreme inputs: no NaN, deterministic outcome
    s = backend.to_numpy(
        U.bernoulli_sample(
            backend.asarray([[1e4, -1e4]]), backend.asarray([0.0, 0.0]), backend, backend.rng(0)
        )
    )
    np.testing.assert_array_equal(s, [[1.0, 0.0]])


def test_gaussian_layer(backend):
    I_np = np.array([[-3.0, 0.0, 2.5], [1.0, -1.0, 40.0]])
    g_np, gam_np = np.array([0.5, -0.2, 1.0]), np.array([1.0, 0.3, 4.0])
    I, g, gam = (backend.asarray(a) for a in (I_np, g_np, gam_np))
    want = np.array(
        [
            [
                math.log(
                    integrate.quad(
                        lambda v: math.exp(
                            -0.5 * gm * v * v + (gg + ii) * v - (gg + ii) ** 2 / (2 * gm)
                        ),
                        -np.inf,
                        np.inf,
                    )[0]
                )
                + (gg + ii) ** 2 / (2 * gm)
                for ii, gg, gm in zip(row, g_np, gam_np)
            ]
            for row in I_np
        ]
    )
    np.testing.assert_allclose(
        backend.to_numpy(U.gaussian_cgf(I, g, gam, backend)), want, rtol=1e-6
    )
    np.testing.assert_allclose(
        backend.to_numpy(U.gaussian_mean(I, g, gam, backend)), (I_np + g_np) / gam_np, rtol=1e-6
    )
    n = 40000
    Ib = backend.asarray(np.repeat(I_np[:1], n, axis=0))
    s = backend.to_numpy(U.gaussian_sample(Ib, g, gam, backend, backend.rng(9))).astype(np.float64)
    mu, sd = (I_np[0] + g_np) / gam_np, 1 / np.sqrt(gam_np)
    assert np.all(np.abs(s.mean(0) - mu) <= 5 * sd / np.sqrt(n))
    assert np.all(np.abs(s.std(0) / sd - 1) <= 5 * np.sqrt(0.5 / n))


# ----------------------------------------------------------------------------------------------
# Free energy of a tiny model
# ----------------------------------------------------------------------------------------------


def _tiny_model(seed=0, N=5, M=3):
    rng = np.random.default_rng(seed)
    W = rng.normal(0, 0.8, (M, N))
    fields = rng.normal(-0.5, 0.5, N)
    hidden = (
        np.array([1.0, 2.0, 0.5]),
        np.array([1.5, 0.7, 1.0]),
        np.array([0.3, -0.5, 1.0]),
        np.array([0.2, 0.8, -0.4]),
    )
    return W, fields, hidden


def test_free_energy_bernoulli_by_enumeration_and_integration(backend):
    """F(v) = -log ∫ exp(-E(v, h)) dh with the h-integral done by quadrature, for all 2^N v."""
    W, fields, hidden = _tiny_model()
    M, N = W.shape
    V = np.array(list(itertools.product([0.0, 1.0], repeat=N)))
    want = []
    for v in V:
        I = W @ v
        logint = sum(
            math.log(
                integrate.quad(
                    lambda h, m=m: math.exp(-_potential(h, *(p[m] for p in hidden)) + I[m] * h),
                    -np.inf,
                    np.inf,
                    epsabs=0,
                    epsrel=1e-12,
                )[0]
            )
            for m in range(M)
        )
        want.append(-fields @ v - logint)
    args = [backend.asarray(a) for a in (V, W, fields)]
    got = backend.to_numpy(
        U.free_energy(*args, tuple(backend.asarray(p) for p in hidden), "bernoulli", backend)
    )
    assert got.shape == (2**N,)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-5)


def test_free_energy_gaussian(backend):
    W, fields, hidden = _tiny_model(1, N=2, M=3)
    gamma = np.array([1.0, 2.5])
    V = np.array([[0.3, -1.2], [2.0, 0.5], [0.0, 0.0]])
    want = []
    for v in V:
        I = W @ v
        logint = sum(
            math.log(
                integrate.quad(
                    lambda h, m=m: math.exp(-_potential(h, *(p[m] for p in hidden)) + I[m] * h),
                    -np.inf,
                    np.inf,
                    epsabs=0,
                    epsrel=1e-12,
                )[0]
            )
            for m in range(3)
        )
        want.append(-fields @ v + 0.5 * gamma @ (v * v) - logint)
    got = U.free_energy(
        *(backend.asarray(a) for a in (V, W, fields)),
        tuple(backend.asarray(p) for p in hidden),
        "gaussian",
        backend,
        gamma=backend.asarray(gamma),
    )
    np.testing.assert_allclose(backend.to_numpy(got), want, rtol=2e-6, atol=2e-5)
    with pytest.raises(ValueError, match="gamma"):
        U.free_energy(
            *(backend.asarray(a) for a in (V, W, fields)),
            tuple(backend.asarray(p) for p in hidden),
            "gaussian",
            backend,
        )


def test_gibbs_chain_reaches_exp_minus_free_energy(backend):
    """Block Gibbs with drelu_sample / bernoulli_sample samples P(v) = exp(-F(v))/Z: the empirical
    distribution of 20,000 chains over the 2^4 states matches (chi-square test)."""
    W, fields, hidden = _tiny_model(2, N=4, M=3)
    W *= 1.5
    V = np.array(list(itertools.product([0.0, 1.0], repeat=4)))
    bk = backend
    Wb, fb = bk.asarray(W), bk.asarray(fields)
    hb = tuple(bk.asarray(p) for p in hidden)
    F = bk.to_numpy(U.free_energy(bk.asarray(V), Wb, fb, hb, "bernoulli", bk)).astype(np.float64)
    p = np.exp(-(F - F.min()))
    p /= p.sum()
    n = 20000
    v = bk.asarray(np.random.default_rng(0).random((n, 4)) < 0.5)
    for step in range(40):
        h = U.drelu_sample(U.hidden_inputs(v, Wb), *hb, bk, bk.rng(3, 0, step))
        v = U.bernoulli_sample(U.visible_inputs(h, Wb), fb, bk, bk.rng(3, 1, step))
    codes = bk.to_numpy(v).astype(int) @ (1 << np.arange(3, -1, -1))
    counts = np.bincount(codes, minlength=16)
    chi2 = stats.chisquare(counts, p * n)
    assert chi2.pvalue > 1e-4, (counts, p * n)


def test_cupy_matches_numpy():
    """On a GPU: the same float32 inputs give the same cgf/mean/var as NumPy (float32 tolerance)."""
    from raysearch.backend import cupy_available

    if not cupy_available():
        pytest.skip("no CUDA device / CuPy not installed")
    nb, cb = get_backend("numpy"), get_backend("cupy")
    cases = _cases()
    a = [nb.to_numpy(x) for x in _columns(cases, nb)]
    for fn in (U.drelu_cgf, U.drelu_mean):
        np.testing.assert_allclose(
            cb.to_numpy(fn(*(cb.asarray(x) for x in a), cb)), fn(*a, nb), rtol=1e-5, atol=1e-5
        )
    for x, y in zip(U.drelu_mean_var(*(cb.asarray(x) for x in a), cb), U.drelu_mean_var(*a, nb)):
        np.testing.assert_allclose(cb.to_numpy(x), y, rtol=1e-4, atol=1e-6)


def test_cpu_erfcx_is_float32_accurate(backend):
    """The CPU path's fitted erfcx (cupyx's on a GPU) vs scipy in float64, over all a >= 0."""
    a = np.concatenate([np.linspace(0, 12, 20001), np.logspace(1, 30, 2001)]).astype(np.float32)
    got = backend.to_numpy(U._erfcx_nonneg(backend.asarray(a), backend)).astype(np.float64)
    want = special.erfcx(a.astype(np.float64))
    assert np.max(np.abs(got / want - 1)) < 4e-7


def test_tail_sampler_solves_its_equation(backend):
    """Far-tail exceedance: survival Phi(-(x+e))/Phi(-x) equals exp(-E) (float64 check)."""
    x = np.repeat(np.array([5.0, 7.0, 30.0, 1e3, 4e4], np.float32), 4)
    E = np.tile(np.array([0.05, 0.7, 3.0, 15.0], np.float32), 5)
    e = backend.to_numpy(U._tail_excess(backend.asarray(x), backend.asarray(E), backend))
    x64, e64 = x.astype(np.float64), e.astype(np.float64)
    log_surv = special.log_ndtr(-(x64 + e64)) - special.log_ndtr(-x64)
    # relative error of log-survival ~ relative error of e (float32 rounding of x e)
    assert np.all(np.abs(log_surv + E) <= 3e-5 * E), np.c_[x, E, (log_surv + E) / E]


def test_device_code_path_on_cpu(reference):
    """The GPU code path (no host checks: tails computed everywhere and selected; cupyx-style
    erfcx/expit) run on strict CPU arrays gives the CPU path's answers."""
    import dataclasses

    dev = dataclasses.replace(get_backend("strict"), is_device=True)
    nb = get_backend("numpy")
    cases, ref = reference
    args_d, args_n = _columns(cases, dev), _columns(cases, nb)
    np.testing.assert_allclose(
        dev.to_numpy(U.drelu_cgf(*args_d, dev)), U.drelu_cgf(*args_n, nb), rtol=1e-6, atol=1e-6
    )
    for a, b in zip(U.drelu_branch_moments(*args_d, dev), U.drelu_branch_moments(*args_n, nb)):
        np.testing.assert_allclose(dev.to_numpy(a), b, rtol=2e-6, atol=1e-30)
    for a, b in zip(U.drelu_mean_var(*args_d, dev), U.drelu_mean_var(*args_n, nb)):
        np.testing.assert_allclose(dev.to_numpy(a), b, rtol=2e-6, atol=1e-30)
    # sampler: same uniforms, so the same draws up to float32 rounding
    regimes = np.array(
        [
            (0.0, 1, 1, 0, 0),
            (5.0, 1, 1, 10, 2),
            (0.0, 1, 1, 50, 50),
            (-900.0, 1e3, 0.05, 20, 1e3),
            (1e4, 0.05, 0.05, 0, 0),
        ]
    ).T
    n = 2000
    I = np.repeat(regimes[0][None, :], n, axis=0)
    hd = dev.to_numpy(
        U.drelu_sample(dev.asarray(I), *(dev.asarray(r) for r in regimes[1:]), dev, dev.rng(2))
    )
    ng = nb.without_cpu_kernels()  # the array code (the compiled sampler draws other uniforms)
    hn = U.drelu_sample(ng.asarray(I), *(ng.asarray(r) for r in regimes[1:]), ng, ng.rng(2))
    np.testing.assert_allclose(hd, hn, rtol=1e-4, atol=1e-6)
    x = np.linspace(-40, 40, 81)[None, :]
    vd = dev.to_numpy(
        U.bernoulli_sample(
            dev.asarray(np.repeat(x, 500, 0)), dev.asarray(np.zeros(81)), dev, dev.rng(1)
        )
    )
    np.testing.assert_allclose(vd.mean(0), special.expit(x[0]), atol=5 * np.sqrt(0.25 / 500))


# ----------------------------------------------------------------------------------------------
# The fused CUDA kernels' source, compiled for the CPU with host stand-ins for erfcxf/normcdfinvf
# ----------------------------------------------------------------------------------------------
_HOST_CUDA_SHIM = r"""
#include <cmath>
#define __device__
#define __forceinline__ inline
static float erfcxf(float xf) {            // host stand-in (double precision), x >= 0 here
    double x = xf;
    if (x < 25.0) return (float)(std::exp(x * x) * std::erfc(x));
    double r = 1.0 / (x * x);
    return (float)((1.0 - 0.5 * r + 0.75 * r * r - 1.875 * r * r * r) / (x * 1.7724538509055159));
}
static float normcdfinvf(float pf) {       // host stand-in: bisection on Phi in double
    double p = pf, lo = -40.0, hi = 40.0;
    if (p <= 0.0) return -INFINITY;
    if (p >= 1.0) return INFINITY;
    for (int k = 0; k < 200; ++k) {
        double mid = 0.5 * (lo + hi);
        if (0.5 * std::erfc(-mid / 1.4142135623730951) < p) lo = mid; else hi = mid;
    }
    return (float)(0.5 * (lo + hi));
}
"""


def _host_kernel_source():
    def kernel(name, ins, outs, op):
        ins = [p.split() for p in ins.split(",")]
        outs = [p.split() for p in outs.split(",")]
        args = ", ".join(
            ["long n", "long M"]
            + [f"const float* {n}_p" for _, n in ins]
            + [f"float* {n}_p" for _, n in outs]
        )
        body = "".join(
            f"const float {n} = {n}_p[{'idx' if n in ('inp', 'u1', 'u2', 'u', 'z') else 'idx % M'}];\n"
            for _, n in ins
        )
        body += "".join(f"float& {n} = {n}_p[idx];\n" for _, n in outs)
        return (
            f'extern "C" void {name}({args}) {{\nfor (long idx = 0; idx < n; ++idx) {{\n'
            f"{body}{op}\n}}\n}}\n"
        )

    src = _HOST_CUDA_SHIM + U._CUDA_PREAMBLE
    for name, (outs, op) in U._CUDA_OPS.items():
        ins = U._CUDA_DRELU_IN + (", float32 u1, float32 u2" if name == "sample" else "")
        src += kernel("k_" + name, ins, "float32 " + outs, op)
    for name, (ins, outs, op) in U._CUDA_VISIBLE.items():
        src += kernel("k_" + name, ins, outs, op)
    return src


def test_cuda_kernel_logic_emulated_on_cpu(tmp_path, reference):
    """The fused kernels' source (what runs on a GPU) compiled for the CPU with g++ and host
    stand-ins for erfcxf/normcdfinvf, against the array code: same formulas, same answers."""
    import ctypes
    import shutil
    import subprocess

    if shutil.which("g++") is None:
        pytest.skip("g++ not available to compile the kernel source for the CPU")
    (tmp_path / "k.cpp").write_text(_host_kernel_source())
    subprocess.run(
        ["g++", "-O1", "-shared", "-fPIC", "-o", str(tmp_path / "k.so"), str(tmp_path / "k.cpp")],
        check=True,
        capture_output=True,
    )
    lib = ctypes.CDLL(str(tmp_path / "k.so"))
    nb = get_backend("numpy")

    def run(name, n_out, ins, M):
        outs = [np.empty(ins[0].shape, np.float32) for _ in range(n_out)]
        ptrs = [np.ascontiguousarray(a, np.float32) for a in ins]
        getattr(lib, "k_" + name)(
            ctypes.c_long(ins[0].size),
            ctypes.c_long(M),
            *[a.ctypes.data_as(ctypes.c_void_p) for a in ptrs + outs],
        )
        return outs

    cases, _ = reference
    args = [nb.to_numpy(a) for a in _columns(cases, nb)]
    K = len(cases)
    np.testing.assert_allclose(
        run("cgf", 1, args, K)[0], U.drelu_cgf(*args, nb), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        run("mean", 1, args, K)[0], U.drelu_mean(*args, nb), rtol=2e-6, atol=1e-30
    )
    for a, b in zip(run("mean_var", 2, args, K), U.drelu_mean_var(*args, nb)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-30)
    for a, b in zip(run("moments", 4, args, K), U.drelu_branch_moments(*args, nb)):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-30)
    # sampler: the same uniforms through the kernel and through the array code
    regimes = np.array(
        [
            (0.0, 1, 1, 0, 0),
            (5.0, 1, 1, 10, 2),
            (0.0, 1, 1, 50, 50),
            (-900.0, 1e3, 0.05, 20, 1e3),
            (1e4, 0.05, 0.05, 0, 0),
            (0.5, 2, 0.5, 1, -1),
        ]
    ).T
    n = 3000
    I = np.repeat(regimes[0][None, :], n, axis=0).astype(np.float32)
    params = [r.astype(np.float32) for r in regimes[1:]]
    rng = nb.rng(8)
    u1, u2 = rng.random(I.shape), rng.random(I.shape)
    h_kernel = run("sample", 1, [I, *params, u1, u2], I.shape[1])[0]
    ng = nb.without_cpu_kernels()  # the array code ...
    h_array = U.drelu_sample(I, *params, ng, ng.rng(8))  # ... draws the same u1, u2
    np.testing.assert_allclose(h_kernel, h_array, rtol=1e-4, atol=1e-6)
    # visible layers
    Iv = np.linspace(-4, 4, 4000, dtype=np.float32).reshape(200, 20)
    g = np.linspace(-1, 1, 20, dtype=np.float32)
    u = nb.rng(2).random(Iv.shape)
    np.testing.assert_array_equal(
        run("bernoulli", 1, [Iv, g, u], 20)[0], (u < special.expit(Iv + g)).astype(np.float32)
    )
    gam = np.linspace(0.5, 2, 20, dtype=np.float32)
    z = nb.rng(3).standard_normal(Iv.shape)
    np.testing.assert_allclose(
        run("gaussian", 1, [Iv, g, gam, z], 20)[0],
        (Iv + g) / gam + z / np.sqrt(gam),
        rtol=1e-6,
        atol=1e-6,
    )
