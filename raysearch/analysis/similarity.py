"""Similarity of the coupling matrices of many models, without ever forming N x N matrices.

For two models with couplings ``J1``, ``J2`` (zero diagonal, see :mod:`.couplings`) over the same N
visible units, the Pearson correlation and the cosine of their off-diagonal entries follow from

* ``sum_{i!=j} J_ij``  = ``c^T (W 1)^{o2} - sum_i d_i``
* ``sum_{i!=j} J1_ij J2_ij`` = ``c1^T (W1 W2^T)^{o2} c2 - d1 . d2``

(``o2`` = elementwise square, ``d`` = the removed diagonal), i.e. from M x M products: O(N M^2) per
pair of models instead of O(N^2). ``method="exact"`` evaluates exactly that, for all pairs at once:
the models are stacked in blocks and each pair of blocks costs one matrix product; only two blocks
are in memory at a time, so memory does not grow with the number of models.

For studies where even O(K^2 N M^2) is too slow (hundreds of models at N = 40,000 on a CPU),
``method="sketch"`` replaces each coupling matrix by a TensorSketch (Pham & Pagh 2013; one hash,
see :class:`TensorSketch`) of its off-diagonal part: a vector of length ``sketch_dim`` whose inner
products are unbiased estimates of the Frobenius inner products, computed in O(N M + M s log s) per
model from the factors. Its error on a correlation is of order ``sqrt(2 / sketch_dim)``; tests
measure it against the exact route.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from raysearch.analysis.couplings import check_factors, diag_of
from raysearch.errors import ConfigError, InputError

log = logging.getLogger(__name__)

METHODS = ("exact", "sketch", "auto")
#: ``method="auto"`` uses the exact route while K^2 N M^2 / 2 stays below this many multiply-adds.
AUTO_EXACT_MAX_MACS = 2e12


@dataclass
class Similarity:
    """Pairwise similarity of K models' off-diagonal coupling entries.

    Attributes
    ----------
    pearson : ndarray, shape (K, K)
    cosine : ndarray, shape (K, K)
    mean : ndarray, shape (K,)
        Mean off-diagonal coupling of each model.
    std : ndarray, shape (K,)
        Standard deviation of the off-diagonal couplings (exact route; sketched otherwise).
    method : str
        ``"exact"`` or ``"sketch"``.
    sketch_dim : int or None
    """

    pearson: np.ndarray
    cosine: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    method: str
    sketch_dim: int | None = None


def _load(models, k, dtype=np.float64):
    W, c = models[k]
    return check_factors(W, c, name=f"model {k}", dtype=dtype)


def estimated_macs(n_models: int, n_visible: int, n_hidden: int) -> float:
    """Multiply-adds of the exact route: K(K+1)/2 pairs x N M^2."""
    return n_models * (n_models + 1) / 2 * n_visible * float(n_hidden) ** 2


def _from_moments(cross, sums, sumsq, n_pairs):
    """Pearson and cosine matrices from off-diagonal moments.

    Parameters
    ----------
    cross : ndarray, shape (K, K)   sum over i != j of J_k,ij J_l,ij
    sums : ndarray, shape (K,)      sum over i != j of J_k,ij
    sumsq : ndarray, shape (K,)     diagonal of ``cross``
    n_pairs : int                   N (N - 1)
    """
    mean = sums / n_pairs
    cov = cross / n_pairs - np.outer(mean, mean)
    var = np.clip(np.diag(cov).copy(), 0.0, None)
    std = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        pearson = cov / np.outer(std, std)
        norm = np.sqrt(np.clip(sumsq, 0.0, None))
        cosine = cross / np.outer(norm, norm)
    np.fill_diagonal(pearson, np.where(std > 0, 1.0, np.nan))
    np.fill_diagonal(cosine, np.where(norm > 0, 1.0, np.nan))
    return np.clip(pearson, -1.0, 1.0), np.clip(cosine, -1.0, 1.0), mean, std


def similarity_matrix(
    models,
    method="exact",
    block_bytes=256 * 2**20,
    sketch_dim=2**15,
    seed=0,
    dtype=np.float64,
    n_jobs=None,
) -> Similarity:
    """Pearson and cosine similarity between the coupling matrices of all pairs of models.

    Parameters
    ----------
    models : sequence of (W, c)
        ``len(models) = K``; ``models[k]`` returns weights (M_k, N) and hidden_var (M_k,). It is
        indexed lazily and repeatedly (e.g. :class:`raysearch.analysis.io.ModelFiles` reads from
        disk), so at most two blocks of models are held in memory. M may differ between models,
        N may not.
    method : {"exact", "sketch", "auto"}
        ``auto`` picks exact while :func:`estimated_macs` <= ``AUTO_EXACT_MAX_MACS``.
    block_bytes : int
        Memory budget for one stacked block of weights (exact route).
    sketch_dim : int
        Length of each model's sketch (sketch route); error ~ sqrt(2 / sketch_dim).
    seed : int
        Hash seed of the sketch (the same for all models, so their sketches are comparable).
    dtype : numpy dtype
        Precision of the block products (exact route): float64 (default) or float32 (faster).
    n_jobs : int, optional
        Threads sketching models concurrently (sketch route); default min(4, CPUs).

    Returns
    -------
    Similarity
    """
    if method not in METHODS:
        raise ConfigError(f"similarity method must be one of {METHODS}, got {method!r}")
    K = len(models)
    if K == 0:
        raise InputError("no models to compare")
    W0, _ = _load(models, 0)
    M0, N = W0.shape
    if method == "auto":
        macs = estimated_macs(K, N, M0)
        method = "exact" if macs <= AUTO_EXACT_MAX_MACS else "sketch"
        log.info(
            "similarity: %d models, N=%d, M=%d -> %s route (%.2g multiply-adds exact)",
            K,
            N,
            M0,
            method,
            macs,
        )
    if method == "exact":
        return _exact(models, K, N, M0, block_bytes, dtype)
    return _sketched(models, K, N, sketch_dim, seed, n_jobs)


# --------------------------------------------------------------------------------------------
# exact route
# --------------------------------------------------------------------------------------------


def _offdiag_sum(W, c, d):
    r = W.sum(axis=1, dtype=np.float64)
    return float(c @ (r * r)) - float(d.sum())


class _Block:
    """Models [start, stop) stacked: Z (sum M_k, N), indicator-weighted C (sum M_k, b), d (b, N)."""

    def __init__(self, models, start, stop, N, dtype):
        Ws, cs = [], []
        for k in range(start, stop):
            W, c = _load(models, k, dtype)
            if W.shape[1] != N:
                raise InputError(
                    f"model {k} has {W.shape[1]} visible units, model 0 has {N}: "
                    "neuron-level similarity needs models of the same recording and "
                    "preprocessing"
                )
            Ws.append(W)
            cs.append(c)
        sizes = [w.shape[0] for w in Ws]
        self.Z = np.concatenate(Ws, axis=0)
        self.C = np.zeros((sum(sizes), len(Ws)))
        off = 0
        for b, (m, c) in enumerate(zip(sizes, cs)):
            self.C[off : off + m, b] = c
            off += m
        self.d = np.stack([diag_of(W, c) for W, c in zip(Ws, cs)])
        self.sums = np.array([_offdiag_sum(W, c, d) for W, c, d in zip(Ws, cs, self.d)])
        self.start, self.stop = start, stop


def _exact(models, K, N, M0, block_bytes, dtype):
    itemsize = np.dtype(dtype).itemsize
    per_model = max(1, M0 * N * itemsize)
    b = int(max(1, min(K, block_bytes // per_model)))
    starts = list(range(0, K, b))
    cross = np.zeros((K, K))
    sums = np.zeros(K)
    for bi, s_i in enumerate(starts):
        A = _Block(models, s_i, min(K, s_i + b), N, dtype)
        sums[A.start : A.stop] = A.sums
        for s_j in starts[bi:]:
            B = A if s_j == s_i else _Block(models, s_j, min(K, s_j + b), N, dtype)
            G = A.Z @ B.Z.T if B is not A else A.Z @ A.Z.T
            G = np.asarray(G, dtype=np.float64)
            G *= G
            blk = A.C.T @ G @ B.C - A.d @ B.d.T
            cross[A.start : A.stop, B.start : B.stop] = blk
            cross[B.start : B.stop, A.start : A.stop] = blk.T
    pearson, cosine, mean, std = _from_moments(cross, sums, np.diag(cross).copy(), N * (N - 1))
    return Similarity(pearson, cosine, mean, std, "exact")


# --------------------------------------------------------------------------------------------
# sketch route
# --------------------------------------------------------------------------------------------


class TensorSketch:
    """TensorSketch of symmetric N x N matrices given as ``W^T diag(c) W`` with zero diagonal.

    One count sketch ``CS(x)[h(i)] += s(i) x_i`` (hash ``h``, random signs ``s``) serves both
    factors: the sketch of ``x x^T`` is the circular self-convolution of ``CS(x)``, i.e. entry
    ``(i, j)`` lands in bucket ``h(i) + h(j) mod dim`` with sign ``s(i) s(j)``. For a symmetric
    matrix with zero diagonal the two entries of an unordered pair always land together, so the
    sketch is ``2 sum_{i<j} J_ij s(i) s(j) e_{h(i)+h(j)}``; the signs of distinct pairs are
    uncorrelated, hence ``E[<T(J1), T(J2)>] = 4 sum_{i<j} J1_ij J2_ij``. Dividing by sqrt(2) makes
    the inner products estimate ``sum_{i!=j} J1_ij J2_ij``. (A single hash halves the work of
    the two-hash TensorSketch; the variance is of the same order, ~ ||J1||^2 ||J2||^2 / dim.)

    Parameters
    ----------
    n : int
        Number of visible units N.
    dim : int
        Sketch length.
    seed : int
    """

    def __init__(self, n: int, dim: int, seed: int = 0):
        import scipy.sparse as sp

        if dim < 16:
            raise ConfigError(f"sketch_dim must be >= 16, got {dim}")
        rng = np.random.default_rng([seed, n, dim])
        self.n, self.dim = n, dim
        self.h = rng.integers(0, dim, n)
        self.s = rng.choice([-1.0, 1.0], n)
        #: count-sketch operator (dim, N): CS(W) = H @ W.T
        self.H = sp.csc_matrix((self.s.astype(np.float32), (self.h, np.arange(n))), shape=(dim, n))
        self.diag_pos = (2 * self.h) % dim
        ones = np.ones((1, n))
        #: sketch of the all-ones off-diagonal matrix (11^T - I)
        self.ones = self.sketch(ones, np.ones(1), np.ones(n))

    def _rank_sum(self, W, c):
        """Sketch (unscaled) of ``sum_mu c_mu w_mu w_mu^T`` (diagonal included), shape (dim,).

        One FFT per hidden unit, single-threaded: threads are used across models instead.
        """
        from scipy import fft

        W = np.asarray(W, dtype=np.float32)
        cs = self.H @ W.T  # (dim, M) count sketches
        f = fft.rfft(cs, axis=0, workers=1)
        spec = (f * f) @ np.asarray(c, dtype=np.complex64)
        return fft.irfft(spec.astype(np.complex128), n=self.dim)

    def _diag(self, d):
        return np.bincount(self.diag_pos, weights=d, minlength=self.dim)

    def sketch(self, W, c, d=None):
        """Sketch of ``J = W^T diag(c) W`` with zero diagonal, shape (dim,).

        ``d`` (the diagonal of ``W^T diag(c) W``, shape (N,)) is computed when not given.
        """
        if d is None:
            d = diag_of(W, c)
        return (self._rank_sum(W, c) - self._diag(d)) / np.sqrt(2.0)


def _sketched(models, K, N, dim, seed, n_jobs=None):
    """Sketch every model (``n_jobs`` threads, each single-threaded; FFT, sparse products and
    elementwise numpy release the GIL), then combine."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    ts = TensorSketch(N, dim, seed)
    n_jobs = n_jobs or min(4, os.cpu_count() or 1)

    def one(k):
        W, c = _load(models, k, np.float32)
        if W.shape[1] != N:
            raise InputError(
                f"model {k} has {W.shape[1]} visible units, model 0 has {N}: "
                "neuron-level similarity needs models of the same recording"
            )
        d = (W * W).T @ c.astype(np.float32)  # diagonal, float32 is enough here
        return ts.sketch(W, c, d), _offdiag_sum(W, c, d.astype(np.float64))

    T = np.empty((K, dim))
    sums = np.empty(K)
    with threadpool_limits(1), ThreadPoolExecutor(max_workers=n_jobs) as pool:
        # at most 2 * n_jobs models in flight, so memory does not grow with K
        for start in range(0, K, 2 * n_jobs):
            ks = range(start, min(K, start + 2 * n_jobs))
            for k, (t, sm) in zip(ks, pool.map(one, ks)):
                T[k], sums[k] = t, sm
    P = N * (N - 1)
    mean = sums / P
    u = ts.ones
    G = T @ T.T  # estimates of sum_{i!=j} J_k J_l
    a = T @ u  # estimates of sum_{i!=j} J_k
    uu = float(u @ u)  # estimate of N (N - 1)
    cov = G - np.outer(mean, a) - np.outer(a, mean) + np.outer(mean, mean) * uu
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        pearson = cov / np.outer(sd, sd)
        nrm = np.sqrt(np.clip(np.diag(G), 0.0, None))
        cosine = G / np.outer(nrm, nrm)
    np.fill_diagonal(pearson, np.where(sd > 0, 1.0, np.nan))
    np.fill_diagonal(cosine, np.where(nrm > 0, 1.0, np.nan))
    return Similarity(
        np.clip(pearson, -1, 1), np.clip(cosine, -1, 1), mean, sd / np.sqrt(P), "sketch", dim
    )
