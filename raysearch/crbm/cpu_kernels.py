"""Compiled CPU kernels (numba) for the Gibbs loop on the NumPy backend.

The dReLU hidden units (every fit):

* :func:`drelu_sample` draws h ~ P(h | I) in one vectorised pass: the formulas of
  :func:`raysearch.crbm.units.drelu_sample` (and of its CUDA kernel) per element, with float32
  :func:`exp32`, :func:`log32` and :func:`ndtri32` written from arithmetic and bit operations so
  that LLVM vectorises the loop (numba's own exp/log are scalar libm calls here), and the rare
  far-tail draws by Newton's method in a scalar float64 pass. The array code makes ~60 NumPy
  calls on small arrays per draw; two chain threads then mostly wait for each other's GIL.
* :func:`rational_erfcx` is the array code's rational erfcx in one pass (bit-identical).

Spike data are sparse (about 4% ones in the zebrafish recordings), and so are the visible states of
the persistent chains. Two of the four pieces of a block-Gibbs step exploit it:

* :func:`bernoulli_draw` draws v ~ Bernoulli(p) for a whole (B, N) block and, in the same call,
  writes the positions of the ones in compressed-row form (``ptr``, ``idx``);
* :func:`csr_matmul` then forms the hidden inputs ``V @ WT`` by adding, for every row, the rows
  of ``WT`` at those positions: about ``density * B * N * M`` additions instead of ``B * N * M``
  multiply-adds. :func:`csr_rows` lists the non-zeros of any (B, N) array for it (the data
  minibatch in the gradient).

The dense product ``H @ W`` stays with NumPy/BLAS. The backend module
(:mod:`raysearch.backend`) decides whether these kernels are used (NumPy backend, numba importable,
``RAYSEARCH_CPU_KERNELS`` not ``0``); :mod:`raysearch.crbm.training` and
:mod:`raysearch.crbm.units` call them through ``bk.cpu_kernels``. All kernels release the GIL
(``nogil``), so the trainer's chain threads run them in parallel; none of them starts threads of
its own.

Random numbers
--------------
The draws are counter-based: the uniform of element (b, n) is the top 32 bits of the
SplitMix64 output at position ``b * N + n`` of the stream that starts at ``key`` (a 64-bit value
drawn from the trainer's seeded PCG64 stream for that Gibbs step), i.e. ``mix(key + (b N + n + 1)
* G)`` with the golden-ratio increment G. So a step's draws depend only on ``(key, b, n)``: they
are reproducible, resume exactly from a checkpoint, and do not depend on how rows are split
between threads. v = 1 exactly when ``u < 2^32 p`` with u uniform on {0, ..., 2^32 - 1}, so
P(v = 1) = p up to 2^-32 (and float64 rounding of p). The dReLU draw takes the top 24 bits of
position ``b * M + m`` of two such streams (the branch, then the inverse CDF) as float32 uniforms,
the resolution of NumPy's float32 ``random``.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types, uint64
from numba.extending import intrinsic

__all__ = [
    "bernoulli_draw",
    "csr_rows",
    "csr_matmul",
    "sparse_hidden_inputs",
    "bernoulli_step",
    "rational_erfcx",
    "drelu_sample",
    "exp32",
    "log32",
    "ndtri32",
    "DENSE_ABOVE",
]

#: Above this fraction of non-zeros the BLAS product is used instead of the sparse kernels
#: (crossover measured on a 2-core AVX-512 VM: the sparse product equals BLAS at about 10% ones
#: for N = 5,000 ... 20,000, M = 100 ... 200; see BENCHMARKS.md).
DENSE_ABOVE = 0.08

_GOLDEN = 0x9E3779B97F4A7C15
_TWO32 = 4294967296.0


@njit(inline="always")
def _mix(z):
    """SplitMix64 output function (Steele, Lea & Flood 2014): a bijective 64-bit mixer."""
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit(nogil=True, cache=True)
def bernoulli_draw(E, key, V, ptr, idx):
    """v = 1 with probability p = 1/(1 + E), elementwise, and the positions of the ones.

    Parameters
    ----------
    E : (B, N) float32
        exp(-(g + I)) (inf where p underflows: v = 0; 0 where p = 1: v = 1; NaN: v = 0).
    key : uint64
        Start of the counter-based stream (see the module docstring).
    V : (B, N) float32, output
        The draws as 0.0 / 1.0.
    ptr : (B + 1,) int64, output
        Row pointers: the ones of row b are ``idx[ptr[b]:ptr[b + 1]]``.
    idx : (B * N + 8,) int32 or longer, output
        Work space; only the first ``ptr[B]`` entries are meaningful.

    Returns
    -------
    int : the number of ones.
    """
    B, N = E.shape
    if idx.shape[0] < B * N + 8 or ptr.shape[0] < B + 1:
        raise ValueError("bernoulli_draw: idx needs B * N + 8 entries and ptr B + 1")
    g = uint64(_GOLDEN)
    n_words = (N + 7) // 8
    ones = np.zeros(8 * n_words, np.uint8)  # this row's draws as bytes, read 8 at a time below
    words = ones.view(np.uint64)
    k = 0
    ptr[0] = 0
    for b in range(B):
        base = key + uint64(b) * uint64(N) * g
        e = E[b]
        v = V[b]
        for n in range(N):  # vectorises: hash, compare, two stores
            u = _mix(base + uint64(n + 1) * g) >> uint64(32)
            one = float(u) * (1.0 + float(e[n])) < _TWO32
            v[n] = np.float32(one)
            ones[n] = one
        for j in range(n_words):  # compaction: skip 8 zeros at once (72% of words
            if words[j] != 0:  # at 4% ones), branch-free inside a word
                for n in range(8 * j, 8 * j + 8):
                    idx[k] = n
                    k += ones[n]
        ptr[b + 1] = k
    return k


@njit(nogil=True, cache=True)
def csr_rows(V, ptr, idx, val):
    """Compressed-row form of a dense (B, N) array: positions and values of its non-zeros.

    Returns the number of non-zeros; row b's are ``idx[ptr[b]:ptr[b + 1]]`` / ``val[...]``.
    """
    B, N = V.shape
    k = 0
    ptr[0] = 0
    for b in range(B):
        row = V[b]
        for n in range(N):
            x = row[n]
            if x != 0:
                idx[k] = n
                val[k] = x
                k += 1
        ptr[b + 1] = k
    return k


@njit(nogil=True, cache=True, fastmath=True)
def csr_matmul(ptr, idx, val, WT, out):
    """out = A @ WT for a sparse A (B, N) in compressed rows.

    Parameters
    ----------
    ptr : (B + 1,) int64, idx : int32
        Compressed rows (:func:`csr_rows`, :func:`bernoulli_draw`).
    val : float32 array or None
        The non-zero values; None: all ones (a 0/1 matrix, e.g. a draw of
        :func:`bernoulli_draw`): then each row of ``out`` is a plain sum of rows of ``WT``
        (numba compiles the None case separately, without the multiplications).
    WT : (N, M) float32, C-contiguous
    out : (B, M) float32, output
    """
    B = out.shape[0]
    M = WT.shape[1]
    for b in range(B):
        o = out[b]
        for m in range(M):
            o[m] = 0.0
        j, end = ptr[b], ptr[b + 1]
        while j + 4 <= end:  # four rows per pass: a quarter of the loads/stores of o
            w0, w1, w2, w3 = WT[idx[j]], WT[idx[j + 1]], WT[idx[j + 2]], WT[idx[j + 3]]
            if val is None:
                for m in range(M):
                    o[m] += (w0[m] + w1[m]) + (w2[m] + w3[m])
            else:
                a0, a1, a2, a3 = val[j], val[j + 1], val[j + 2], val[j + 3]
                for m in range(M):
                    o[m] += (a0 * w0[m] + a1 * w1[m]) + (a2 * w2[m] + a3 * w3[m])
            j += 4
        while j < end:
            w0 = WT[idx[j]]
            a0 = np.float32(1.0) if val is None else val[j]
            for m in range(M):
                o[m] += a0 * w0[m]
            j += 1


@njit(inline="always", error_model="numpy")  # numpy: x / 0 without a check, so loops over
def _erfcx_rat(x, c, k, one, two):  # it vectorise (no transcendental function)
    """P((x - k)/(x + k)) / (1 + 2x) by Horner, c a tuple of 13 coefficients of x's type; the
    array code's operations in its order (units._erfcx_nonneg)."""
    y = (x - k) / (x + k)
    r = y * c[12]
    for j in range(11, 0, -1):
        r = (r + c[j]) * y
    r += c[0]
    return r / (x * two + one)


@njit(nogil=True, cache=True, error_model="numpy")
def _rational_erfcx(a, c, k, out):
    one = a.dtype.type(1.0)
    two = a.dtype.type(2.0)
    for i in range(a.shape[0]):
        out[i] = _erfcx_rat(a[i], c, k, one, two)


def rational_erfcx(a, coef, k):
    """erfcx(a) for a >= 0 as ``P((a - k)/(a + k)) / (1 + 2a)``, one compiled pass.

    The same floating-point operations, in the same order and precision, as the NumPy passes of
    :func:`raysearch.crbm.units._erfcx_nonneg` (which owns the polynomial), so the same numbers;
    one call instead of ~27 (the dReLU formulas call it on small arrays, where NumPy's per-call
    cost dominates and two chain threads contend for the GIL).

    Parameters
    ----------
    a : float32 or float64 array, any shape, a >= 0
    coef : sequence of 13 float
        Coefficients of P (degree 12), constant term first.
    k : float

    Returns
    -------
    array like ``a``
    """
    a = np.asarray(a)
    if len(coef) != 13:
        raise ValueError("rational_erfcx: the kernel is written for a degree-12 polynomial")
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty_like(flat)
    c = tuple(a.dtype.type(x) for x in coef)
    _rational_erfcx(flat, c, a.dtype.type(k), out)
    return out.reshape(a.shape)


# --------------------------------------------------------------------------------------------
# float32 exp, log and inverse normal CDF that LLVM can vectorise
# --------------------------------------------------------------------------------------------
# numba's math.exp / math.log are calls into libm, one element at a time (this numba has no SVML),
# which leaves a loop that needs them at one element per call. These versions use only
# arithmetic, floor, sqrt, selects and bit reinterpretation, so a loop over an array compiles to
# SIMD code. Accuracy (test_cpu_kernels checks it against NumPy/SciPy): exp32 within 3 float32
# ulp wherever the result is a normal float32 (subnormal results, overflow and specials handled);
# log32 within 3 ulp away from log = 0 and 2e-8 absolute near it (subnormal and special inputs
# handled); ndtri32 within 4e-7 relative.
_F = np.float32


@intrinsic
def _as_int32(typingctx, x):
    """The bit pattern of a float32 as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _as_float32(typingctx, i):
    """The float32 with the bit pattern of an int32."""
    if i != types.int32:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always", error_model="numpy")
def _exp32(x):
    # exp(x) = 2^k exp(r), |r| <= ln2/2 (Cody-Waite split of ln2: k * 0.693359375 is exact), exp(r)
    # by its Taylor polynomial to r^7 (truncation < 6e-9), 2^k as two exponent-field powers so
    # that results down to the subnormals and up to the overflow come out right
    xc = min(max(x, _F(-103.98)), _F(88.73))
    k = np.floor(xc * _F(1.4426950408889634) + _F(0.5))
    r = xc - k * _F(0.693359375)
    r = r - k * _F(-2.1219444005469057e-4)
    p = r * _F(1.0 / 5040.0) + _F(1.0 / 720.0)
    p = p * r + _F(1.0 / 120.0)
    p = p * r + _F(1.0 / 24.0)
    p = p * r + _F(1.0 / 6.0)
    p = p * r + _F(0.5)
    p = p * r + _F(1.0)
    p = p * r + _F(1.0)
    ki = np.int32(k)
    k1 = np.int32(ki >> 1)
    k2 = np.int32(ki - k1)
    y = p * _as_float32(np.int32((k1 + 127) << 23)) * _as_float32(np.int32((k2 + 127) << 23))
    return y if x == x else x  # NaN stays NaN


@njit(inline="always", error_model="numpy")
def _log32(x):
    # x = 2^e m, m in [sqrt(1/2), sqrt(2)); log(m) = 2 atanh(s), s = (m - 1)/(m + 1), |s| < 0.172,
    # by its series to s^9 (truncation < 2e-9 relative); subnormal x scaled by 2^23 first
    sub = x < _F(1.1754943508222875e-38)
    xs = x * _F(8388608.0) if sub else x
    bits = _as_int32(xs)
    e = np.int32((bits >> 23) - 127)
    e = np.int32(e - 23) if sub else e
    m = _as_float32(np.int32((bits & 0x007FFFFF) | 0x3F800000))
    big = m > _F(1.4142135623730951)
    m = m * _F(0.5) if big else m
    e = np.int32(e + 1) if big else e
    f = m - _F(1.0)
    s = f / (f + _F(2.0))
    z = s * s
    q = z * _F(1.0 / 9.0) + _F(1.0 / 7.0)
    q = q * z + _F(1.0 / 5.0)
    q = q * z + _F(1.0 / 3.0)
    s2 = s + s
    ef = _F(e)
    y = ef * _F(0.693359375) + (ef * _F(-2.1219444005469057e-4) + (s2 + s2 * (z * q)))
    y = _F(-np.inf) if x == _F(0.0) else y
    y = _F(np.inf) if x == _F(np.inf) else y
    return y if x >= _F(0.0) else _F(np.nan)  # negative or NaN: NaN


# Chebyshev coefficients of the three pieces of ndtri32, from ``python bench/fit_ndtri.py``
# (least-squares fits against scipy.special.ndtri; its docstring says how).
_NDTRI_CENTRAL = (
    2.873473539227902,
    0.42495236874574527,
    0.06986317633479447,
    0.014427118125591084,
    0.0033201004870140514,
    0.00081380657611952,
    0.0002078684075381659,
    5.465725366695836e-05,
    1.4683873474056053e-05,
    4.010738977430938e-06,
    1.1099824257047145e-06,
    3.104897729781138e-07,
    8.76239951138134e-08,
)
_NDTRI_TAIL1 = (
    0.794264745190562,
    0.12755425151272234,
    -0.03168366701682764,
    0.007228376947795108,
    -0.0015783437432006088,
    0.0003357564395973833,
    -7.022548669438324e-05,
    1.4518309631269704e-05,
    -2.976598393885304e-06,
    6.065193503053087e-07,
    -1.2300622005633374e-07,
)
_NDTRI_TAIL2 = (
    0.9539705102652597,
    0.038895216355066306,
    -0.013203958363497479,
    0.0041041829768649245,
    -0.001216878037537185,
    0.0003504207637153441,
    -9.893999019995073e-05,
    2.754346839385924e-05,
    -7.587110032847613e-06,
    2.0729559227785917e-06,
    -5.627276047578163e-07,
    1.519643135787685e-07,
    -4.086275269439268e-08,
)
_NC = tuple(_F(c) for c in _NDTRI_CENTRAL)
_NT1 = tuple(_F(c) for c in _NDTRI_TAIL1)
_NT2 = tuple(_F(c) for c in _NDTRI_TAIL2)


@njit(inline="always", error_model="numpy")
def _clenshaw(c, t):
    """sum_k c[k] T_k(t) (Chebyshev series, float32, c a tuple of constants)."""
    t2 = t + t
    b1 = _F(0.0)
    b2 = _F(0.0)
    for j in range(len(c) - 1, 0, -1):
        b1, b2 = c[j] + t2 * b1 - b2, b1
    return c[0] + t * b1 - b2


@njit(inline="always", error_model="numpy")
def _ndtri32(p):
    q = p - _F(0.5)
    zc = q * _clenshaw(_NC, q * q * _F(2.0 / 0.180625) - _F(1.0))
    pt = min(p, _F(1.0) - p)
    s = np.sqrt(_F(-2.0) * _log32(pt))
    t1 = _clenshaw(_NT1, (s - _F(2.25)) * _F(2.0 / 2.75) - _F(1.0))
    t2 = _clenshaw(_NT2, (s - _F(5.0)) * _F(2.0 / 9.5) - _F(1.0))
    zt = s * (t1 if s < _F(5.0) else t2)
    zt = -zt if p < _F(0.5) else zt
    z = zc if abs(q) <= _F(0.425) else zt
    z = _F(-np.inf) if p <= _F(0.0) else z
    z = _F(np.inf) if p >= _F(1.0) else z
    return z if p == p else p


@njit(nogil=True, cache=True, error_model="numpy")
def _map32(x, out, op):
    for i in range(x.shape[0]):
        if op == 0:
            out[i] = _exp32(x[i])
        elif op == 1:
            out[i] = _log32(x[i])
        else:
            out[i] = _ndtri32(x[i])


def _elementwise(x, op):
    x = np.ascontiguousarray(x, dtype=np.float32)
    flat = x.reshape(-1)
    out = np.empty_like(flat)
    _map32(flat, out, op)
    return out.reshape(x.shape)


def exp32(x):
    """exp of a float32 array with the kernels' vectorisable exp (for the tests; not tuned)."""
    return _elementwise(x, 0)


def log32(x):
    """log of a float32 array with the kernels' vectorisable log."""
    return _elementwise(x, 1)


def ndtri32(p):
    """Inverse standard normal CDF of a float32 array with the kernels' vectorisable version."""
    return _elementwise(p, 2)


# --------------------------------------------------------------------------------------------
# dReLU sampler (the formulas of raysearch.crbm.units, fused per element)
# --------------------------------------------------------------------------------------------
_SQRT_HALF = _F(0.7071067811865476)
_LOG_SQRT_HALF_PI = _F(0.5 * math.log(math.pi / 2.0))
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TWO_M24 = _F(2.0**-24)


@njit(inline="always", error_model="numpy")
def _mills32(x, c, k):
    """log M(x), t and q = exp(-x^2/2) of one branch (units._Mills, one element)."""
    a = abs(x) * _SQRT_HALF
    e = _erfcx_rat(a, c, k, _F(1.0), _F(2.0))
    a2 = a * a
    q = _exp32(-a2)
    neg = x < _F(0.0)
    t = _F(2.0) - q * e if neg else e
    lm = _log32(t) + (a2 if neg else _F(0.0)) + _LOG_SQRT_HALF_PI
    return lm, t, q


@njit(inline="always")
def _uniform24(key, i):
    """Uniform float32 on [0, 1) with 24 random bits: element i of the counter-based stream."""
    return _F(np.float32(_mix(key + uint64(i + 1) * uint64(_GOLDEN)) >> uint64(40)) * _TWO_M24)


@njit(nogil=True, cache=True, error_model="numpy")
def _drelu_draw(I, sgp, sgm, tp, tm, lsr, key1, key2, c, k, x_newton, out, xs):
    """Vectorised pass: everything but the far tail (x >= x_newton: out = +-inf, xs = x)."""
    B, M = I.shape
    for b in range(B):
        row = I[b]
        o = out[b]
        xr = xs[b]
        for m in range(M):
            i = b * M + m
            x_p = (tp[m] - row[m]) / sgp[m]
            x_m = (row[m] + tm[m]) / sgm[m]
            lp, t_p, q_p = _mills32(x_p, c, k)
            lm, t_m, q_m = _mills32(x_m, c, k)
            d = lp - lm + lsr[m]
            pos = _uniform24(key1, i) < _F(1.0) / (_F(1.0) + _exp32(-d))
            x = x_p if pos else x_m
            sf = (
                _F(0.5)
                * (t_p if pos else t_m)
                * (_F(1.0) if x < _F(0.0) else (q_p if pos else q_m))
            )
            u = _F(1.0) - _uniform24(key2, i)  # (0, 1]
            e = max(-_ndtri32(sf * u) - x, _F(0.0))
            e = _F(np.inf) if x >= x_newton else e
            o[m] = e / sgp[m] if pos else -e / sgm[m]
            xr[m] = x


@njit(nogil=True, cache=True, error_model="numpy")
def _drelu_tail(sgp, sgm, key2, c64, k, x_newton, n_steps, out, xs):
    """Scalar pass over the rare far-tail elements: the exceedance by Newton's method on
    x e + e^2/2 - log(M(x + e)/M(x)) = -log(u) (units._tail_excess, in float64)."""
    B, M = out.shape
    for b in range(B):
        for m in range(M):
            x = float(xs[b, m])
            if not x >= x_newton:
                continue
            i = b * M + m
            u = 1.0 - float(_uniform24(key2, i))
            E = -math.log(u)
            e = 2.0 * E / (x + math.sqrt(x * x + 2.0 * E))
            log_ex = math.log(_erfcx_rat(x * 0.7071067811865476, c64, k, 1.0, 2.0))
            for _ in range(n_steps):
                ey = _erfcx_rat((x + e) * 0.7071067811865476, c64, k, 1.0, 2.0)
                g = (x + 0.5 * e) * e - math.log(ey) + log_ex - E
                e = max(e - g * ey / _SQRT_2_OVER_PI, 0.0)
            out[b, m] = e / sgp[m] if out[b, m] > 0 else -e / sgm[m]


def drelu_sample(I, gp, gm, tp, tm, key1, key2, erfcx_coef, erfcx_k, x_newton, newton_steps):
    """Exact draw of h ~ P(h | I) for dReLU hidden units, float32, one compiled pass.

    The formulas of :func:`raysearch.crbm.units.drelu_sample` per element (as its CUDA kernel):
    the branch h >= 0 with probability expit(log Z+ - log Z-), then the truncated normal of that
    branch by its inverse CDF, or, in the far tail (x >= ``x_newton``), by Newton's method on
    the exceedance. Uniforms: element i = b M + m takes the 24-bit uniforms of the counter-based
    streams ``key1`` (branch) and ``key2`` (inverse CDF), as :func:`bernoulli_draw` does.

    Parameters
    ----------
    I : (B, M) float32
    gp, gm, tp, tm : (M,) float32
    key1, key2 : int
        64-bit stream keys.
    erfcx_coef, erfcx_k, x_newton, newton_steps
        units' rational erfcx and tail-sampler settings (units owns them).

    Returns
    -------
    (B, M) float32
    """
    I = np.ascontiguousarray(I, dtype=np.float32)
    gp, gm, tp, tm = (np.ascontiguousarray(a, dtype=np.float32) for a in (gp, gm, tp, tm))
    sgp = np.sqrt(gp)
    sgm = np.sqrt(gm)
    lsr = np.log(sgm / sgp)
    out = np.empty_like(I)
    xs = np.empty_like(I)
    c = tuple(_F(v) for v in erfcx_coef)
    _drelu_draw(
        I,
        sgp,
        sgm,
        tp,
        tm,
        lsr,
        np.uint64(key1),
        np.uint64(key2),
        c,
        _F(erfcx_k),
        _F(x_newton),
        out,
        xs,
    )
    _drelu_tail(
        sgp,
        sgm,
        np.uint64(key2),
        tuple(float(v) for v in erfcx_coef),
        float(erfcx_k),
        float(x_newton),
        int(newton_steps),
        out,
        xs,
    )
    return out


# --------------------------------------------------------------------------------------------
# NumPy-level helpers (work space per thread, density fallback to BLAS)
# --------------------------------------------------------------------------------------------
_local = threading.local()


def _workspace(n_rows: int, size: int, with_values: bool):
    """Per-thread buffers (ptr, idx[, val]) of at least the given sizes, reused between calls
    (fresh large allocations would page-fault on every Gibbs step)."""
    ws = getattr(_local, "ws", None)
    if ws is None or ws[0].shape[0] < n_rows + 1 or ws[1].shape[0] < size + 8:
        ws = (
            np.empty(n_rows + 1, np.int64),
            np.empty(size + 8, np.int32),
            np.empty(size + 8, np.float32),
        )
        _local.ws = ws
    return ws if with_values else ws[:2]


def sparse_hidden_inputs(V, WT):
    """``V @ WT`` for a (B, N) float32 array with mostly zeros: the sparse kernel when at most
    :data:`DENSE_ABOVE` of the entries are non-zero, BLAS otherwise. Returns (B, M) float32."""
    B, N = V.shape
    ptr, idx, val = _workspace(B, B * N, True)
    nnz = csr_rows(V, ptr, idx, val)
    if nnz > DENSE_ABOVE * B * N:
        return V @ WT
    out = np.empty((B, WT.shape[1]), np.float32)
    csr_matmul(ptr, idx, val, WT, out)
    return out


def bernoulli_step(I, g, WT, key):
    """Draw v ~ Bernoulli(expit(g + I)) and return it with its hidden inputs ``v @ WT``.

    Parameters
    ----------
    I : (B, N) float32
        Visible inputs ``H @ W`` (overwritten: used as work space).
    g : (N,) float32
        Visible fields.
    WT : (N, M) float32, C-contiguous
    key : int
        64-bit stream key for this draw.

    Returns
    -------
    V : (B, N) float32 0/1, hidden_inputs : (B, M) float32
    """
    B, N = I.shape
    E = np.subtract(-g, I, out=I)  # -(g + I)
    with np.errstate(over="ignore"):
        np.exp(E, out=E)  # NumPy's SIMD exp
    V = np.empty((B, N), np.float32)
    ptr, idx = _workspace(B, B * N, False)
    nnz = bernoulli_draw(E, np.uint64(key), V, ptr, idx)
    if nnz > DENSE_ABOVE * B * N:
        return V, V @ WT
    out = np.empty((B, WT.shape[1]), np.float32)
    csr_matmul(ptr, idx, None, WT, out)
    return V, out
