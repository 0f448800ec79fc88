"""Unit layers of the compositional RBM: dReLU hidden units, Bernoulli and Gaussian visible units.

Pure functions of ``(inputs, parameters, bk[, rng])`` written once against a
:class:`raysearch.backend.Backend`; all arrays must already be backend arrays (``bk.asarray``).
Inputs ``I`` have shape (B, M) (hidden side) or (B, N) (visible side); per-unit parameters have
shape (M,) or (N,) and broadcast over the batch. Everything is float32.

dReLU conventions (docs/model.md §1, the reference code's theta-minus sign)::

    U(h) = gp/2 h+^2 + gm/2 h-^2 + tp h+ + tm max(-h, 0),   h+ = max(h,0), h- = min(h,0)
    P(h | I) ∝ exp(-U(h) + I h)
    x+ = (tp - I)/sqrt(gp),  x- = (I + tm)/sqrt(gm)
    Z± = M(x±)/sqrt(g±),     M(x) = Phi(-x)/phi(x)  (Mills ratio)
    Gamma(I) = log(Z+ + Z-)

Numerics
--------
* ``log M(x)`` uses one ``erfcx(|x|/sqrt 2)``: for x >= 0 it is ``log erfcx`` (no underflow), for
  x < 0 the identity ``erfcx(-a) = 2 exp(a^2) - erfcx(a)`` gives
  ``a^2 + log(2 - erfc(a))`` with ``erfc(a) = erfcx(a) exp(-a^2)`` in [0, 1]: no overflow either.
  Gamma is then a ``logaddexp`` of finite logs, finite for any finite input.
* Per branch, with lambda = 1/M(x) (the normal hazard), the truncated-normal moments are
  ``mean = r/sqrt(g)``, ``var = v/g`` with ``r = lambda - x`` and ``v = 1 - lambda r``. For large x
  both subtractions cancel (r ~ 1/x, v ~ 1/x^2), so for x >= ``_X_CF`` they come from Laplace's
  continued fraction ``r = 1/(x + s)``, ``s = 2/(x + 3/(x + 4/(x + ...)))``, where
  ``v = r (s - r)`` has no cancellation (truncation error < 1e-8 relative, checked against float64).
* The mixture variance is ``p+ var+ + p- var- + p+ p- (m+ - m-)^2`` (no cancellation), with
  ``p± = expit(±(log Z+ - log Z-))`` both computed directly (no ``1 - p``).
* Sampling: branch by a uniform against p+, then the exceedance e = z - x >= 0 of a standard
  normal z truncated to z >= x (x = x+ or x- of the chosen branch), and h = ±e/sqrt(g). For
  x < ``_X_NEWTON`` by inverse CDF, ``z = -ndtri(U Phi(-x))``; in the far tail (where Phi(-x)
  underflows) by solving ``x e + e^2/2 - log(M(x+e)/M(x)) = -log U`` with Newton's method, which
  is exact to float32 rounding (the function is convex and increasing and the start
  ``e0 = 2E/(x + sqrt(x^2 + 2E))`` lies right of the root, so the iteration converges
  monotonically; derivative = the hazard lambda(x + e)).

Speed
-----
* CPU (numpy, strict): erfcx is a fitted float32 polynomial (see ``_ERFCX_POLY``), expit uses
  NumPy's SIMD exp, the dReLU sampler evaluates both branches in one stacked array (half the
  NumPy calls), Bernoulli sampling decides with one random byte per unit and draws a float32
  uniform only for the 1/256 of units the byte leaves open (:func:`bernoulli_sample_mask`), and
  the continued fraction / Newton tail work runs only on the elements that need it (a host check
  is free here).
  On the 2-core dev box this made drelu_sample / drelu_mean on (100, 200) arrays 3-8x faster than
  a scipy.special-based version (ad-hoc timing on a noisy shared machine; per-update timings are
  in the trainer section of BENCHMARKS.md).
* GPU (cupy, float32): each call is one fused ``ElementwiseKernel`` (plus the uniform draws),
  with no host synchronisation; the kernel source is tested on the CPU by compiling it with g++
  (tests/crbm/test_units.py) but has not been timed on a GPU yet. Other dtypes, or a kernel that
  fails to build, use the array code, which computes tails everywhere and selects (no host check).
"""

from __future__ import annotations

import math
import os
import warnings

import numpy as np

__all__ = [
    "drelu_cgf",
    "drelu_mean",
    "drelu_mean_var",
    "drelu_branch_moments",
    "drelu_sample",
    "bernoulli_mean",
    "bernoulli_sample",
    "bernoulli_sample_mask",
    "bernoulli_cgf",
    "gaussian_mean",
    "gaussian_sample",
    "gaussian_cgf",
    "hidden_inputs",
    "visible_inputs",
    "free_energy",
]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_LOG_SQRT_HALF_PI = 0.5 * math.log(math.pi / 2.0)  # log M(x) = this + log erfcx(x/sqrt2)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # 1/M(x) = this / erfcx(x/sqrt2)
_LOG_2PI = math.log(2.0 * math.pi)
_X_CF = 4.0  # continued fraction for r, v at x >= this
_CF_DEPTH = 16  # levels: relative truncation error < 1e-8 at x >= 4
_X_NEWTON = 5.0  # tail sampler at x >= this (Phi(-5) = 2.9e-7: inverse CDF still exact below)
_NEWTON_STEPS = 3  # from the start below: 2 reach float32 precision for E >= 0.1


# erfcx on the CPU: erfcx(a) = P(y)/(1 + 2a), y = (a - 2)/(a + 2), a >= 0, with P of degree 12
# least-squares fitted (for raysearch, at 400 Chebyshev nodes of y, against scipy's float64
# erfcx). Relative error of the fit 4e-9; evaluated in float32 within 2.3e-7 (3 ulp) for all
# a >= 0 (test_units checks this). It is ~27 SIMD-friendly NumPy passes, about 6x faster than
# scipy.special.erfcx on (100, 200) float32 arrays; on a GPU cupyx's fused erfcx is used instead.
_ERFCX_K = 2.0
_ERFCX_POLY = (
    1.27697838142703,
    -0.09276376277487022,
    -0.16603038352632202,
    0.16404945413944289,
    -0.054220266615093056,
    -0.008018963078735288,
    0.00872460763960875,
    0.001217410592308819,
    -0.0014640709102771321,
    -0.0003579204480078309,
    0.00022157154984215143,
    6.33694584371561e-05,
    -2.0255989366374706e-05,
)


def _erfcx_nonneg(a, bk):
    """erfcx(a) for a >= 0 (a new array)."""
    if bk.is_device:
        return bk.erfcx(a)
    K = bk.cpu_kernels
    if K is not None and a.dtype in (np.float32, np.float64):
        return K.rational_erfcx(a, _ERFCX_POLY, _ERFCX_K)  # the same arithmetic, one pass
    y = a - _ERFCX_K
    y /= a + _ERFCX_K
    r = y * _ERFCX_POLY[-1]
    for c in _ERFCX_POLY[-2:0:-1]:
        r += c
        r *= y
    r += _ERFCX_POLY[0]
    d = a * 2.0
    d += 1.0
    r /= d
    return r


def _expit(d, bk):
    """Logistic function (SIMD exp on the CPU instead of scipy's expit)."""
    if bk.is_device:
        return bk.expit(d)
    with np.errstate(over="ignore"):
        e = bk.xp.exp(-d)
    e += 1.0
    return 1.0 / e


# --------------------------------------------------------------------------------------------
# Mills-ratio helpers (elementwise on any shape)
# --------------------------------------------------------------------------------------------
class _Mills:
    """Pieces of the Mills ratio M(x) = Phi(-x)/phi(x), finite for every finite x.

    With a2 = x^2/2, q = exp(-a2), e = erfcx(|x|/sqrt2):
    t = e (x >= 0) or 2 - q e (x < 0), so M(x) = sqrt(pi/2) t [exp(a2) where x < 0].
    """

    __slots__ = ("neg", "a2", "q", "e", "t")

    def __init__(self, x, bk):
        xp = bk.xp
        a = xp.abs(x)
        a *= _INV_SQRT2
        self.e = _erfcx_nonneg(a, bk)  # in (0, 1]
        a *= a
        self.a2 = a  # x^2/2
        self.neg = x < 0
        self.q = xp.exp(-a)  # exp(-x^2/2)
        t = self.q * self.e  # erfc(|x|/sqrt2) in [0, 1]
        t *= -1.0
        t += 2.0
        self.t = xp.where(self.neg, t, self.e)

    def log_m(self, bk):
        xp = bk.xp
        lm = xp.log(self.t)
        lm += xp.where(self.neg, self.a2, 0.0)
        lm += _LOG_SQRT_HALF_PI
        return lm

    def hazard(self, bk):
        """lambda(x) = 1/M(x)."""
        h = bk.xp.where(self.neg, self.q, 1.0)
        h *= _SQRT_2_OVER_PI
        h /= self.t
        return h


def _log_mills(x, bk):
    return _Mills(x, bk).log_m(bk)


def _tail_r_v(x, bk, need_var=True):
    """Continued-fraction ``(r, v)`` for x >= _X_CF (x is clipped there; see module docstring)."""
    xp = bk.xp
    xc = xp.maximum(x, _X_CF)
    c = xp.zeros_like(xc)
    for k in range(_CF_DEPTH, 1, -1):
        c += xc
        c = k / c
    s = c  # 2/(x + 3/(x + ...))
    r = 1.0 / (xc + s)
    if not need_var:
        return r, None
    v = s - r
    v *= r
    return r, v


def _excess_moments(x, bk, need_var=True):
    """Per branch: ``log M(x)``, ``r(x) = lambda - x`` (mean of z - x) and ``v(x)`` (var of z).

    z ~ N(0, 1) truncated to z >= x.
    """
    xp = bk.xp
    m = _Mills(x, bk)
    log_m = m.log_m(bk)
    lam = m.hazard(bk)
    r = lam - x
    v = None
    if need_var:
        v = lam * r
        v *= -1.0
        v += 1.0
    tail = x >= _X_CF
    if bk.is_device:  # no host check on a GPU: compute everywhere, select
        rt, vt = _tail_r_v(x, bk, need_var)
        r = xp.where(tail, rt, r)
        if need_var:
            v = xp.where(tail, vt, v)
    elif bool(tail.any()):  # CPU: only the tail elements
        rt, vt = _tail_r_v(x[tail], bk, need_var)
        r[tail] = rt
        if need_var:
            v[tail] = vt
    return log_m, r, v


def _branches(I, gp, gm, tp, tm, bk, need_var=True):
    """Shared work: log Z±, p±, branch means m± and branch variances var±."""
    xp = bk.xp
    sgp = xp.sqrt(gp)
    sgm = xp.sqrt(gm)
    x_p = tp - I
    x_p /= sgp
    x_m = I + tm
    x_m /= sgm
    lmp, r_p, v_p = _excess_moments(x_p, bk, need_var)
    lmm, r_m, v_m = _excess_moments(x_m, bk, need_var)
    lmp -= xp.log(sgp)  # log Z+
    lmm -= xp.log(sgm)  # log Z-
    d = lmp - lmm
    p_p = _expit(d, bk)
    d *= -1.0
    p_m = _expit(d, bk)
    r_p /= sgp  # m+ = E[h | h >= 0 branch] >= 0
    r_m /= -sgm  # m- <= 0
    if need_var:
        v_p /= gp
        v_m /= gm
    return lmp, lmm, p_p, p_m, r_p, r_m, v_p, v_m


# --------------------------------------------------------------------------------------------
# Fused CUDA kernels (CuPy backend): one kernel per call instead of ~50 elementwise launches
# --------------------------------------------------------------------------------------------
# The same formulas as the array code in this module, per element, in float32 with CUDA's erfcxf /
# normcdfinvf. Built lazily through ``bk.xp.ElementwiseKernel`` (this module never imports CuPy).
# Used only for float32 arrays on the "cupy" backend; if a kernel fails to build, a warning is
# issued once and the array code is used instead. RAYSEARCH_FUSED_KERNELS=0 turns them off.
_CUDA_PREAMBLE = r"""
#define RS_SQRT_HALF 0.70710678118654752f
#define RS_LOG_SQRT_HALF_PI 0.22579135264472744f
#define RS_SQRT_2_OVER_PI 0.79788456080286536f
#define RS_X_CF 4.0f
#define RS_X_NEWTON 5.0f

// Mills-ratio pieces of one branch: log M(x), t and q = exp(-x^2/2) (see _Mills).
__device__ __forceinline__ float rs_mills(float x, float* t_out, float* q_out) {
    float a = fabsf(x) * RS_SQRT_HALF;
    float e = erfcxf(a);
    float a2 = a * a;
    float q = expf(-a2);
    bool neg = x < 0.0f;
    float t = neg ? 2.0f - q * e : e;
    *t_out = t;
    *q_out = q;
    return logf(t) + (neg ? a2 : 0.0f) + RS_LOG_SQRT_HALF_PI;
}

// log M(x), r = lambda - x and v = 1 - lambda r of one branch (see _excess_moments).
__device__ __forceinline__ float rs_excess(float x, float* r_out, float* v_out) {
    float t, q;
    float logm = rs_mills(x, &t, &q);
    if (x >= RS_X_CF) {
        float c = 0.0f;
        for (int k = 16; k >= 2; --k) c = (float)k / (x + c);
        float r = 1.0f / (x + c);
        *r_out = r;
        *v_out = r * (c - r);
    } else {
        float lam = (x < 0.0f ? q : 1.0f) * RS_SQRT_2_OVER_PI / t;
        float r = lam - x;
        *r_out = r;
        *v_out = 1.0f - lam * r;
    }
    return logm;
}

__device__ __forceinline__ float rs_expit(float d) {
    return 1.0f / (1.0f + expf(-d));
}
"""

_CUDA_BRANCHES = r"""
float sgp = sqrtf(gp), sgm = sqrtf(gm);
float xpl = (tp - inp) / sgp, xmi = (inp + tm) / sgm;
float rp, vp, rm, vm;
float lzp = rs_excess(xpl, &rp, &vp) - logf(sgp);
float lzm = rs_excess(xmi, &rm, &vm) - logf(sgm);
float pp = rs_expit(lzp - lzm), pm = rs_expit(lzm - lzp);
float mp = rp / sgp, mm = -rm / sgm;
"""

_CUDA_OPS = {
    "cgf": (
        "cgf",
        r"""
float sgp = sqrtf(gp), sgm = sqrtf(gm);
float t, q;
float lzp = rs_mills((tp - inp) / sgp, &t, &q) - logf(sgp);
float lzm = rs_mills((inp + tm) / sgm, &t, &q) - logf(sgm);
cgf = fmaxf(lzp, lzm) + log1pf(expf(-fabsf(lzp - lzm)));
""",
    ),
    "mean": ("mean", _CUDA_BRANCHES + "mean = pp * mp + pm * mm;\n"),
    "mean_var": (
        "mean, float32 var",
        _CUDA_BRANCHES
        + r"""
mean = pp * mp + pm * mm;
float dm = mp - mm;
var = pp * (vp / gp) + pm * (vm / gm) + pp * pm * dm * dm;
""",
    ),
    "moments": (
        "ep, float32 ep2, float32 em, float32 em2",
        _CUDA_BRANCHES
        + r"""
ep = pp * mp;
ep2 = pp * (vp / gp + mp * mp);
em = pm * mm;
em2 = pm * (vm / gm + mm * mm);
""",
    ),
    "sample": (
        "h",
        r"""
float sgp = sqrtf(gp), sgm = sqrtf(gm);
float xpl = (tp - inp) / sgp, xmi = (inp + tm) / sgm;
float tpl, qpl, tmi, qmi;
float d = rs_mills(xpl, &tpl, &qpl) - rs_mills(xmi, &tmi, &qmi) + logf(sgm / sgp);
bool pos = u1 < rs_expit(d);
float x = pos ? xpl : xmi;
float sf = 0.5f * (pos ? tpl : tmi) * (x < 0.0f ? 1.0f : (pos ? qpl : qmi));
float u = 1.0f - u2;
float e;
if (x < RS_X_NEWTON) {
    e = fmaxf(-normcdfinvf(sf * u) - x, 0.0f);
} else {
    float E = -logf(u);
    e = 2.0f * E / (x + sqrtf(x * x + 2.0f * E));
    float lex = logf(erfcxf(x * RS_SQRT_HALF));
    for (int it = 0; it < 3; ++it) {
        float ey = erfcxf((x + e) * RS_SQRT_HALF);
        float g = (x + 0.5f * e) * e - logf(ey) + lex - E;
        e = fmaxf(e - g * ey * (1.0f / RS_SQRT_2_OVER_PI), 0.0f);
    }
}
h = pos ? e / sgp : -e / sgm;
""",
    ),
}
_CUDA_DRELU_IN = "float32 inp, float32 gp, float32 gm, float32 tp, float32 tm"
_CUDA_VISIBLE = {
    "bernoulli": (
        "float32 inp, float32 g, float32 u",
        "float32 v",
        "v = (u < 1.0f / (1.0f + expf(-(inp + g)))) ? 1.0f : 0.0f;",
    ),
    "gaussian": (
        "float32 inp, float32 g, float32 gam, float32 z",
        "float32 v",
        "v = (inp + g) / gam + z / sqrtf(gam);",
    ),
}
_FUSED = {"enabled": os.environ.get("RAYSEARCH_FUSED_KERNELS", "1") != "0", "kernels": {}}


def _cuda_kernel(bk, name):
    k = _FUSED["kernels"].get(name)
    if k is None:
        if name in _CUDA_OPS:
            outs, op = _CUDA_OPS[name]
            ins = _CUDA_DRELU_IN + (", float32 u1, float32 u2" if name == "sample" else "")
            k = bk.xp.ElementwiseKernel(
                ins, "float32 " + outs, op, f"raysearch_drelu_{name}", preamble=_CUDA_PREAMBLE
            )
        else:
            ins, outs, op = _CUDA_VISIBLE[name]
            k = bk.xp.ElementwiseKernel(ins, outs, op, f"raysearch_{name}_sample")
        _FUSED["kernels"][name] = k
    return k


def _fused(bk, name, *arrays):
    """Run fused kernel ``name`` on float32 CuPy arrays; None when not applicable or failing."""
    if bk.name != "cupy" or not _FUSED["enabled"]:
        return None
    if any(getattr(a, "dtype", None) != np.float32 for a in arrays):
        return None
    try:
        return _cuda_kernel(bk, name)(*arrays)
    except Exception as exc:  # build failure on this machine: fall back for the whole process
        _FUSED["enabled"] = False
        warnings.warn(
            f"raysearch: fused CUDA kernel {name!r} failed ({type(exc).__name__}: "
            f"{exc}); using the unfused CuPy array code",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


# --------------------------------------------------------------------------------------------
# dReLU hidden units
# --------------------------------------------------------------------------------------------
def drelu_cgf(I, gp, gm, tp, tm, bk):
    """Log-partition Gamma(I) = log ∫ exp(-U(h) + I h) dh of dReLU units.

    Parameters
    ----------
    I : array (B, M)
        Inputs.
    gp, gm : array (M,)
        gamma_plus, gamma_minus (> 0).
    tp, tm : array (M,)
        theta_plus, theta_minus (reference sign convention).
    bk : Backend

    Returns
    -------
    array (B, M), finite for any finite inputs.
    """
    out = _fused(bk, "cgf", I, gp, gm, tp, tm)
    if out is not None:
        return out
    xp = bk.xp
    x_p = (tp - I) / xp.sqrt(gp)
    x_m = (I + tm) / xp.sqrt(gm)
    lzp = _log_mills(x_p, bk)
    lzp -= 0.5 * xp.log(gp)
    lzm = _log_mills(x_m, bk)
    lzm -= 0.5 * xp.log(gm)
    return bk.logaddexp(lzp, lzm)


def drelu_mean(I, gp, gm, tp, tm, bk):
    """E[h | I] = Gamma'(I), shape (B, M). See :func:`drelu_cgf` for the parameters."""
    out = _fused(bk, "mean", I, gp, gm, tp, tm)
    if out is not None:
        return out
    _, _, p_p, p_m, m_p, m_m, _, _ = _branches(I, gp, gm, tp, tm, bk, need_var=False)
    m_p *= p_p
    m_m *= p_m
    m_p += m_m
    return m_p


def drelu_mean_var(I, gp, gm, tp, tm, bk):
    """(E[h | I], Var[h | I]) = (Gamma'(I), Gamma''(I)), each (B, M).

    The variance is ``p+ var+ + p- var- + p+ p- (m+ - m-)^2``: positive, no cancellation.
    """
    out = _fused(bk, "mean_var", I, gp, gm, tp, tm)
    if out is not None:
        return out
    _, _, p_p, p_m, m_p, m_m, v_p, v_m = _branches(I, gp, gm, tp, tm, bk)
    mean = p_p * m_p
    mean += p_m * m_m
    var = p_p * v_p
    var += p_m * v_m
    m_p -= m_m
    m_p *= m_p
    m_p *= p_p
    m_p *= p_m
    var += m_p
    return mean, var


def drelu_branch_moments(I, gp, gm, tp, tm, bk):
    """Branch moments (E[h+], E[h+^2], E[h-], E[h-^2]) given I, each (B, M).

    h+ = max(h, 0) and h- = min(h, 0), so E[h-] <= 0 and E[h-^2] >= 0. These are the sufficient
    statistics of (theta_plus, gamma_plus, theta_minus, gamma_minus).
    """
    out = _fused(bk, "moments", I, gp, gm, tp, tm)
    if out is not None:
        return out
    _, _, p_p, p_m, m_p, m_m, v_p, v_m = _branches(I, gp, gm, tp, tm, bk)
    e_p = p_p * m_p
    m_p *= m_p
    v_p += m_p
    v_p *= p_p
    e_m = p_m * m_m
    m_m *= m_m
    v_m += m_m
    v_m *= p_m
    return e_p, v_p, e_m, v_m


def _tail_excess(x, E, bk):
    """Exceedance for x >= _X_NEWTON: solve x e + e^2/2 - log(M(x+e)/M(x)) = E by Newton."""
    xp = bk.xp
    e = xp.sqrt(x * x + 2.0 * E)
    e += x
    e = (2.0 * E) / e  # root of x e + e^2/2 = E: right of the solution
    log_ex = xp.log(_erfcx_nonneg(x * _INV_SQRT2, bk))
    for _ in range(_NEWTON_STEPS):
        y = x + e
        ey = _erfcx_nonneg(y * _INV_SQRT2, bk)
        g = 0.5 * e
        g += x
        g *= e
        g -= xp.log(ey)
        g += log_ex
        g -= E  # g(e) - E >= 0
        g *= ey  # / hazard(x + e) = * erfcx((x+e)/sqrt2) / sqrt(2/pi)
        g *= 1.0 / _SQRT_2_OVER_PI
        e -= g
        e = xp.maximum(e, 0.0)
    return e


def _truncated_excess(x, sf, u, bk):
    """Exceedance e = z - x >= 0 of z ~ N(0, 1) truncated to z >= x.

    ``sf`` = Phi(-x) (may underflow to 0 where x >= _X_NEWTON), ``u`` uniforms in (0, 1].
    """
    xp = bk.xp
    # Inverse CDF (exact while Phi(-x) is representable): P(z > t) = u Phi(-x).
    p = sf * u
    z = bk.ndtri(p)
    z += x
    z *= -1.0  # z - x
    e = xp.maximum(z, 0.0)  # (+inf where p underflowed; replaced below)
    tail = x >= _X_NEWTON
    if bk.is_device:  # no host check on a GPU: compute everywhere, select
        xt = xp.maximum(x, _X_NEWTON)
        return xp.where(tail, _tail_excess(xt, -xp.log(u), bk), e)
    if bool(tail.any()):  # CPU: only the tail elements
        e[tail] = _tail_excess(x[tail], -xp.log(u[tail]), bk)
    return e


def drelu_sample(I, gp, gm, tp, tm, bk, rng):
    """Exact sample of h ~ P(h | I) for dReLU units, shape (B, M).

    Parameters
    ----------
    I, gp, gm, tp, tm, bk
        As in :func:`drelu_cgf`.
    rng : BackendRNG
        ``bk.rng(...)``; two uniform arrays of I's shape are drawn.
    """
    if bk.name == "cupy" and _FUSED["enabled"]:
        u = rng.random((2,) + tuple(I.shape))  # both uniform arrays in one draw
        out = _fused(bk, "sample", I, gp, gm, tp, tm, u[0], u[1])
        if out is not None:
            return out
    K = bk.cpu_kernels
    if K is not None and all(a.dtype == np.float32 for a in (I, gp, gm, tp, tm)):
        # NumPy backend: the same formulas in one compiled, vectorised pass (raysearch.crbm.cpu_kernels)
        return K.drelu_sample(
            I,
            gp,
            gm,
            tp,
            tm,
            rng.key64(),
            rng.key64(),
            _ERFCX_POLY,
            _ERFCX_K,
            _X_NEWTON,
            _NEWTON_STEPS,
        )
    xp = bk.xp
    sgp = xp.sqrt(gp)
    sgm = xp.sqrt(gm)
    if bk.is_device:
        x_p = tp - I
        x_p /= sgp
        x_m = I + tm
        x_m /= sgm
        mp, mm = _Mills(x_p, bk), _Mills(x_m, bk)
        d = mp.log_m(bk)
        d -= mm.log_m(bk)
        t_p, t_m, q_p, q_m = mp.t, mm.t, mp.q, mm.q
    else:
        # CPU: both branches stacked in one (2, B, M) array, so each of the ~40 elementwise
        # passes of the Mills ratio is one NumPy call instead of two (small arrays: call overhead)
        xs = xp.empty((2,) + tuple(I.shape), dtype=xp.result_type(I, tp))
        xp.subtract(tp, I, out=xs[0])
        xs[0] /= sgp
        xp.add(I, tm, out=xs[1])
        xs[1] /= sgm
        x_p, x_m = xs[0], xs[1]
        ms = _Mills(xs, bk)
        lm = ms.log_m(bk)
        d = lm[0] - lm[1]
        t_p, t_m, q_p, q_m = ms.t[0], ms.t[1], ms.q[0], ms.q[1]
    d += xp.log(sgm / sgp)  # log Z+ - log Z-
    pos = rng.random(I.shape) < _expit(d, bk)
    x = xp.where(pos, x_p, x_m)
    # Phi(-x) = t/2 [* exp(-x^2/2) where x >= 0], from the chosen branch's Mills pieces
    sf = xp.where(pos, t_p, t_m)
    sf *= xp.where(x < 0, 1.0, xp.where(pos, q_p, q_m))
    sf *= 0.5
    u = rng.random(I.shape)
    u *= -1.0
    u += 1.0  # (0, 1]
    e = _truncated_excess(x, sf, u, bk)
    e /= xp.where(pos, sgp, -sgm)
    return e


# --------------------------------------------------------------------------------------------
# Visible units
# --------------------------------------------------------------------------------------------
def bernoulli_mean(I, g, bk):
    """P(v = 1 | I) = expit(g + I); I (B, N), g (N,)."""
    return bk.expit(I + g)


def bernoulli_sample(I, g, bk, rng):
    """v ~ Bernoulli(expit(g + I)) as float32 0/1, shape of I."""
    if bk.name == "cupy" and _FUSED["enabled"]:
        out = _fused(bk, "bernoulli", I, g, rng.random(I.shape))
        if out is not None:
            return out
    return bernoulli_sample_mask(I, g, bk, rng).astype(I.dtype)


def bernoulli_sample_mask(I, g, bk, rng):
    """v ~ Bernoulli(expit(g + I)) as a boolean array of I's shape.

    On a device: ``u < expit(g + I)`` with float32 uniforms. On the CPU, exactly the same law with
    a quarter of the random bits: the uniform is u = (k + f)/256 with a random byte k and a
    float32 uniform f drawn only where the byte does not decide, i.e. v = 1 when k < floor(256 p),
    v = 0 when k > floor(256 p), and v = [f < 256 p - k] when k == floor(256 p) (1/256 of the
    entries). p = 1/(1 + exp(-(g + I))) uses NumPy's SIMD exp.
    """
    xp = bk.xp
    if bk.is_device:
        p = bk.expit(I + g)
        return rng.random(I.shape) < p
    x = xp.subtract(-g, I)  # -(g + I)
    with np.errstate(over="ignore"):  # exp -> inf: c = 0, v = 0
        xp.exp(x, out=x)
    x += 1.0
    xp.divide(np.float32(256.0), x, out=x)  # c = 256 p in [0, 256]
    k = rng.random_bytes(I.shape)
    t = x.astype(np.uint16)  # floor(c); 256 where p == 1
    v = k < t
    amb = xp.flatnonzero(k == t)
    if amb.size:
        vf, cf, kf = v.reshape(-1), x.reshape(-1), k.reshape(-1)
        vf[amb] = rng.random(amb.shape) < (cf[amb] - kf[amb])
    return v


def bernoulli_cgf(I, g, bk):
    """log sum_{v in {0,1}} exp((g + I) v) = softplus(g + I), shape of I."""
    return bk.logaddexp(0.0, I + g)


def gaussian_mean(I, g, gamma, bk):
    """E[v | I] = (g + I)/gamma for Gaussian visibles with energy gamma/2 v^2 - g v."""
    m = I + g
    m /= gamma
    return m


def gaussian_sample(I, g, gamma, bk, rng):
    """v ~ Normal((g + I)/gamma, 1/gamma), shape of I."""
    if bk.name == "cupy" and _FUSED["enabled"]:
        out = _fused(bk, "gaussian", I, g, gamma, rng.standard_normal(I.shape))
        if out is not None:
            return out
    xp = bk.xp
    z = rng.standard_normal(I.shape)
    z /= xp.sqrt(gamma)
    z += gaussian_mean(I, g, gamma, bk)
    return z


def gaussian_cgf(I, g, gamma, bk):
    """log ∫ exp(-gamma/2 v^2 + (g + I) v) dv = (g + I)^2/(2 gamma) + log(2 pi/gamma)/2."""
    xp = bk.xp
    c = I + g
    c *= c
    c /= 2.0 * gamma
    c += 0.5 * (_LOG_2PI - xp.log(gamma))
    return c


# --------------------------------------------------------------------------------------------
# Model-level helpers
# --------------------------------------------------------------------------------------------
def hidden_inputs(v, W):
    """I_mu(v) = sum_i w_{mu i} v_i: v (B, N), W (M, N) -> (B, M)."""
    return v @ W.T


def visible_inputs(h, W):
    """I_i(h) = sum_mu w_{mu i} h_mu: h (B, M), W (M, N) -> (B, N)."""
    return h @ W


def free_energy(v, W, fields, hidden, visible, bk, gamma=None):
    """Free energy F(v) = -log sum_h exp(-E(v, h)), so that P(v) = exp(-F(v))/Z.

    Parameters
    ----------
    v : array (B, N)
    W : array (M, N)
    fields : array (N,)
        Visible fields g.
    hidden : tuple of 4 arrays (M,)
        (gamma_plus, gamma_minus, theta_plus, theta_minus).
    visible : {"bernoulli", "gaussian"}
    bk : Backend
    gamma : array (N,), required for gaussian visibles
        Visible precisions (energy term gamma_i/2 v_i^2).

    Returns
    -------
    array (B,)
        ``-v.g - sum_mu Gamma_mu(I_mu(v))`` (+ ``sum_i gamma_i v_i^2/2`` for gaussian).
    """
    gp, gm, tp, tm = hidden
    f = drelu_cgf(hidden_inputs(v, W), gp, gm, tp, tm, bk).sum(axis=1)
    f += v @ fields
    f *= -1.0
    if visible == "gaussian":
        if gamma is None:
            raise ValueError("free_energy: gaussian visibles need gamma")
        f += 0.5 * ((v * v) @ gamma)
    elif visible != "bernoulli":
        raise ValueError(f"free_energy: unknown visible type {visible!r}")
    return f
