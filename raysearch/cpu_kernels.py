"""Compiled CPU kernels (numba) for the Gibbs loop of Bernoulli-visible cRBMs on the NumPy backend.

Spike data are sparse (about 4% ones in the zebrafish recordings), and so are the visible states of
the persistent chains. Two of the four pieces of a block-Gibbs step exploit it:

* :func:`bernoulli_draw` draws v ~ Bernoulli(p) for a whole (B, N) block and, in the same call,
  writes the positions of the ones in compressed-row form (``ptr``, ``idx``);
* :func:`csr_matmul` then forms the hidden inputs ``V @ WT`` by adding, for every row, the rows
  of ``WT`` at those positions: about ``density * B * N * M`` additions instead of ``B * N * M``
  multiply-adds. :func:`csr_rows` lists the non-zeros of any (B, N) array for it (the data
  minibatch in the gradient).

The dense product ``H @ W`` and the dReLU draw stay with NumPy/BLAS. The backend module
(:mod:`raysearch.backend`) decides whether these kernels are used (NumPy backend, numba importable,
``RAYSEARCH_CPU_KERNELS`` not ``0``); :mod:`raysearch.crbm.training` calls them through
``bk.cpu_kernels``. All kernels release the GIL (``nogil``), so the trainer's chain threads run
them in parallel; none of them starts threads of its own.

Random numbers
--------------
The Bernoulli draw is counter-based: the uniform of element (b, n) is the top 32 bits of the
SplitMix64 output at position ``b * N + n`` of the stream that starts at ``key`` (a 64-bit value
drawn from the trainer's seeded PCG64 stream for that Gibbs step), i.e. ``mix(key + (b N + n + 1)
* G)`` with the golden-ratio increment G. So a step's draws depend only on ``(key, b, n)``: they
are reproducible, resume exactly from a checkpoint, and do not depend on how rows are split
between threads. v = 1 exactly when ``u < 2^32 p`` with u uniform on {0, ..., 2^32 - 1}, so
P(v = 1) = p up to 2^-32 (and float64 rounding of p).
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, uint64

__all__ = ["bernoulli_draw", "csr_rows", "csr_matmul", "sparse_hidden_inputs", "bernoulli_step",
           "DENSE_ABOVE"]

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
    ones = np.zeros(8 * n_words, np.uint8)   # this row's draws as bytes, read 8 at a time below
    words = ones.view(np.uint64)
    k = 0
    ptr[0] = 0
    for b in range(B):
        base = key + uint64(b) * uint64(N) * g
        e = E[b]
        v = V[b]
        for n in range(N):                   # vectorises: hash, compare, two stores
            u = _mix(base + uint64(n + 1) * g) >> uint64(32)
            one = float(u) * (1.0 + float(e[n])) < _TWO32
            v[n] = np.float32(one)
            ones[n] = one
        for j in range(n_words):             # compaction: skip 8 zeros at once (72% of words
            if words[j] != 0:                # at 4% ones), branch-free inside a word
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
        while j + 4 <= end:                  # four rows per pass: a quarter of the loads/stores of o
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


# --------------------------------------------------------------------------------------------
# NumPy-level helpers (work space per thread, density fallback to BLAS)
# --------------------------------------------------------------------------------------------
_local = threading.local()


def _workspace(n_rows: int, size: int, with_values: bool):
    """Per-thread buffers (ptr, idx[, val]) of at least the given sizes, reused between calls
    (fresh large allocations would page-fault on every Gibbs step)."""
    ws = getattr(_local, "ws", None)
    if ws is None or ws[0].shape[0] < n_rows + 1 or ws[1].shape[0] < size + 8:
        ws = (np.empty(n_rows + 1, np.int64), np.empty(size + 8, np.int32),
              np.empty(size + 8, np.float32))
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
    E = np.subtract(-g, I, out=I)                        # -(g + I)
    with np.errstate(over="ignore"):
        np.exp(E, out=E)                                 # NumPy's SIMD exp
    V = np.empty((B, N), np.float32)
    ptr, idx = _workspace(B, B * N, False)
    nnz = bernoulli_draw(E, np.uint64(key), V, ptr, idx)
    if nnz > DENSE_ABOVE * B * N:
        return V, V @ WT
    out = np.empty((B, WT.shape[1]), np.float32)
    csr_matmul(ptr, idx, None, WT, out)
    return V, out
