"""Effective couplings of a cRBM, held in low-rank form.

The second-order effective coupling between visible units i and j is (docs/model.md section 5)

    J_ij = sum_mu w_{mu i} w_{mu j} c_mu   (i != j),   J_ii = 0,

with the weights stored as ``W`` of shape (M, N) and ``c = hidden_var`` of shape (M,). In matrix
form ``J = W^T diag(c) W - diag(d)`` with ``d_i = sum_mu c_mu w_{mu i}^2``. ``J`` has rank <= M + N
in general but is fully described by ``(W, c)``: nothing here builds the dense N x N matrix except
:meth:`LowRankCouplings.dense`, which exists for tests on small N.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raysearch.errors import InputError


def check_factors(weights, hidden_var, name="model", dtype=np.float64):
    """Validate and return ``(W, c)`` as arrays (W in ``dtype``, c in float64).

    Parameters
    ----------
    weights : array_like, shape (M, N)
    hidden_var : array_like, shape (M,)
    name : str
        Used in error messages (e.g. the model file).

    Returns
    -------
    W : ndarray, shape (M, N), ``dtype``
    c : ndarray, shape (M,), float64
    """
    W = np.asarray(weights, dtype=dtype)
    c = np.asarray(hidden_var, dtype=np.float64).reshape(-1)
    if W.ndim != 2:
        raise InputError(f"{name}: weights must be 2-D (M, N), got shape {W.shape}")
    if c.shape[0] != W.shape[0]:
        raise InputError(
            f"{name}: hidden_var has {c.shape[0]} entries but weights have "
            f"{W.shape[0]} hidden units (rows); re-save the model"
        )
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(c))):
        raise InputError(
            f"{name}: weights or hidden_var contain NaN/inf (a diverged fit?); exclude this model"
        )
    return W, c


@dataclass(frozen=True)
class LowRankCouplings:
    """Couplings ``J = W^T diag(c) W`` with zero diagonal, stored as factors.

    Attributes
    ----------
    weights : ndarray, shape (M, N)
    hidden_var : ndarray, shape (M,)
    """

    weights: np.ndarray
    hidden_var: np.ndarray

    @classmethod
    def from_factors(cls, weights, hidden_var, name="model"):
        W, c = check_factors(weights, hidden_var, name)
        return cls(W, c)

    @property
    def n_visible(self) -> int:
        return int(self.weights.shape[1])

    @property
    def n_hidden(self) -> int:
        return int(self.weights.shape[0])

    def diagonal(self) -> np.ndarray:
        """Diagonal ``d`` of ``W^T diag(c) W`` (removed from J), shape (N,)."""
        return diag_of(self.weights, self.hidden_var)

    def rows(self, start: int, stop: int, cols=None) -> np.ndarray:
        """Dense block ``J[start:stop, cols]`` with the diagonal zeroed, shape (stop-start, n_cols).

        Memory is O((stop - start) * n_cols); use it to stream over neuron chunks.
        """
        return coupling_block(self.weights, self.hidden_var, np.arange(start, stop), cols)

    def dense(self) -> np.ndarray:
        """The full N x N matrix. For tests and small N only."""
        return self.rows(0, self.n_visible)

    def offdiag_stats(self) -> dict:
        """Sum, sum of squares and count of the off-diagonal entries (ordered pairs i != j)."""
        return offdiag_stats(self.weights, self.hidden_var)


def diag_of(W, c) -> np.ndarray:
    """``d_i = sum_mu c_mu W[mu, i]^2``, shape (N,)."""
    return np.einsum("m,mn->n", c, np.square(W, dtype=np.float64))


def coupling_block(W, c, rows, cols=None) -> np.ndarray:
    """Dense block of J with zero diagonal.

    Parameters
    ----------
    W : ndarray, shape (M, N)
    c : ndarray, shape (M,)
    rows : ndarray of int, shape (a,)
    cols : ndarray of int, shape (b,), optional (all N columns when None)

    Returns
    -------
    ndarray, shape (a, b)
    """
    rows = np.asarray(rows)
    Wr = W[:, rows] * c[:, None]
    Wc = W if cols is None else W[:, cols]
    block = Wr.T @ Wc
    if cols is None:
        block[np.arange(rows.size), rows] = 0.0
    else:
        inv = np.full(W.shape[1], -1)
        inv[np.asarray(cols)] = np.arange(len(cols))
        k = inv[rows]
        hit = k >= 0
        block[np.nonzero(hit)[0], k[hit]] = 0.0
    return block


def pair_couplings(W, c, i, j) -> np.ndarray:
    """``J_ij = sum_mu c_mu w_{mu i} w_{mu j}`` for given pairs, from the low-rank form.

    Parameters
    ----------
    W : array, shape (M, N)
    c : array, shape (M,)
    i, j : int arrays, shape (P,), ``i != j``

    Returns
    -------
    ndarray, shape (P,) float64 (memory O(M P), no N x N matrix)
    """
    W = np.asarray(W, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64).reshape(-1)
    return np.einsum("m,mp,mp->p", c, W[:, i], W[:, j])


def offdiag_stats(W, c) -> dict:
    """Moments of the off-diagonal coupling entries, from M x M products only.

    Over ordered pairs i != j (J is symmetric, so every statistic over i < j is the same):

    * ``sum = 1^T W^T C W 1 - sum_i d_i = sum_mu c_mu (W 1)_mu^2 - sum_i d_i``
    * ``sumsq = ||J + diag(d)||_F^2 - sum_i d_i^2 = c^T (W W^T)^{o2} c - sum_i d_i^2``

    Parameters
    ----------
    W : ndarray, shape (M, N)
    c : ndarray, shape (M,)

    Returns
    -------
    dict with keys ``n_pairs`` (N(N-1)), ``sum``, ``sumsq``, ``mean``, ``var``, ``diag`` (N,)
    """
    n = W.shape[1]
    d = diag_of(W, c)
    r = W.sum(axis=1)
    total = float(c @ (r * r)) - float(d.sum())
    G = W @ W.T
    sumsq = float(c @ (G * G) @ c) - float(d @ d)
    P = n * (n - 1)
    mean = total / P
    return {
        "n_pairs": P,
        "sum": total,
        "sumsq": sumsq,
        "mean": mean,
        "var": sumsq / P - mean * mean,
        "diag": d,
    }
