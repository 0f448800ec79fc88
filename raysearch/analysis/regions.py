"""Region-level couplings and their comparison across models, recordings and a structural matrix.

``J^R_kl = mean over i in R_k, j in R_l, i != j of |J_ij|`` (the paper's normalised L1, docs/model.md
section 5). Because it needs ``|J_ij|``, it cannot be reduced to M x M products: it is computed over
chunks of rows of J, so memory stays O(chunk x N) whatever N is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raysearch.analysis.couplings import check_factors
from raysearch.errors import InputError


def region_couplings(
    weights,
    hidden_var,
    unit_region,
    n_regions=None,
    chunk=None,
    block_bytes=64 * 2**20,
    dtype=np.float32,
):
    """Mean |J_ij| over pairs of visible units of each pair of regions, computed blockwise.

    The units are sorted by region once; each block of rows of J (only the columns at or right of
    the block, J being symmetric: half the products) is then reduced to regions with
    ``np.add.reduceat`` over contiguous column segments (O(chunk N), no N x R product).

    Parameters
    ----------
    weights : ndarray, shape (M, N)
    hidden_var : ndarray, shape (M,)
    unit_region : ndarray of int, shape (N,)
        Region index of each visible unit, -1 for none (excluded).
    n_regions : int, optional
        R; defaults to ``unit_region.max() + 1``.
    chunk : int, optional
        Rows of J formed at a time; default from ``block_bytes``.
    block_bytes : int
        Memory budget of one block of rows when ``chunk`` is None.
    dtype : numpy dtype
        Precision of the J blocks (float32 default, ~1e-6 relative; sums are in float64).

    Returns
    -------
    ndarray, shape (R, R)
        Symmetric; NaN for region pairs without any pair of units (empty regions, or a region of
        one unit on the diagonal).
    """
    W, c = check_factors(weights, hidden_var)
    unit_region = np.asarray(unit_region, dtype=np.int64).reshape(-1)
    if unit_region.shape[0] != W.shape[1]:
        raise InputError(
            f"unit_region has {unit_region.shape[0]} entries, weights have "
            f"{W.shape[1]} visible units"
        )
    R = int(unit_region.max()) + 1 if n_regions is None else int(n_regions)
    if R < 1 or unit_region.max() >= R:
        raise InputError(f"unit_region has indices up to {unit_region.max()} but {R} regions")
    keep = np.flatnonzero(unit_region >= 0)
    keep = keep[np.argsort(unit_region[keep], kind="stable")]  # sorted by region
    reg = unit_region[keep]
    n = keep.size
    counts = np.bincount(reg, minlength=R).astype(np.float64)
    total = np.zeros((R, R))
    if n:
        Wk = np.ascontiguousarray(W[:, keep], dtype=dtype)
        cd = c.astype(dtype)
        itemsize = np.dtype(dtype).itemsize
        if chunk is None:
            chunk = int(max(1, block_bytes // (itemsize * n)))
        for a in range(0, n, chunk):
            e = min(a + chunk, n)
            # rows [a, e) against columns [a, n): J is symmetric, so the columns left of a were
            # covered by earlier chunks (as their rows)
            block = (Wk[:, a:e] * cd[:, None]).T @ Wk[:, a:]  # (e - a, n - a)
            block[np.arange(e - a), np.arange(e - a)] = 0.0  # zero diagonal
            np.abs(block, out=block)
            onehot = np.zeros((e - a, R))
            onehot[np.arange(e - a), reg[a:e]] = 1.0
            # square part (both orders of each pair present): count once
            ids, sums = _segment_sums(block[:, : e - a], reg[a:e])
            total[:, ids] += onehot.T @ sums
            if e < n:  # pairs (i < j) with j beyond the chunk: count for (R_i, R_j) and (R_j, R_i)
                ids, sums = _segment_sums(block[:, e - a :], reg[e:])
                part = np.zeros((R, R))
                part[:, ids] = onehot.T @ sums
                total += part + part.T
    pairs = np.outer(counts, counts) - np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / pairs
    out[pairs <= 0] = np.nan
    return out


def _segment_sums(block, col_reg):
    """Sum the columns of ``block`` (chunk, n) by region; ``col_reg`` (n,) is sorted.

    Returns the region ids present and the (chunk, n_present) sums, in float64.
    """
    starts = np.flatnonzero(np.r_[True, col_reg[1:] != col_reg[:-1]])
    return col_reg[starts], np.add.reduceat(block, starts, axis=1, dtype=np.float64)


def region_couplings_dense(J, unit_region, n_regions=None):
    """Reference implementation on a dense J (tests, small N). Same conventions as above."""
    unit_region = np.asarray(unit_region)
    R = int(unit_region.max()) + 1 if n_regions is None else int(n_regions)
    out = np.full((R, R), np.nan)
    A = np.abs(np.asarray(J, dtype=np.float64)).copy()
    np.fill_diagonal(A, np.nan)
    for k in range(R):
        for m in range(R):
            blk = A[np.ix_(unit_region == k, unit_region == m)]
            if np.isfinite(blk).any():
                out[k, m] = np.nanmean(blk)
    return out


def _upper(R, include_diagonal=True):
    return np.triu_indices(R, 0 if include_diagonal else 1)


def log_pearson(a, b, include_diagonal=True):
    """Pearson correlation of log10 of two region matrices over one triangle, non-zero entries.

    Parameters
    ----------
    a, b : ndarray, shape (R, R)

    Returns
    -------
    (r, n) : (float, int)
        Correlation (NaN when fewer than 3 usable entries) and the number of entries used.
    """
    iu = _upper(a.shape[0], include_diagonal)
    x, y = np.asarray(a)[iu], np.asarray(b)[iu]
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 3:
        return float("nan"), int(ok.sum())
    lx, ly = np.log10(x[ok]), np.log10(y[ok])
    if lx.std() == 0 or ly.std() == 0:
        return float("nan"), int(ok.sum())
    return float(np.corrcoef(lx, ly)[0, 1]), int(ok.sum())


def consistency(mats, labels=None, include_diagonal=True) -> pd.DataFrame:
    """Pairwise Pearson (log10, non-zero entries, one triangle) between region matrices.

    Parameters
    ----------
    mats : sequence of ndarray, shape (R, R)
    labels : sequence of str, optional

    Returns
    -------
    DataFrame, shape (K, K)
    """
    K = len(mats)
    labels = list(labels) if labels is not None else [str(i) for i in range(K)]
    out = np.eye(K)
    for i in range(K):
        for j in range(i + 1, K):
            out[i, j] = out[j, i] = log_pearson(mats[i], mats[j], include_diagonal)[0]
    return pd.DataFrame(out, index=labels, columns=labels)


def structural_spearman(functional, structural, include_diagonal=True):
    """Spearman correlation with a structural matrix over its non-zero entries, one triangle.

    Parameters
    ----------
    functional, structural : ndarray, shape (R, R)

    Returns
    -------
    (rho, n) : (float, int)
    """
    from scipy.stats import spearmanr

    f, s = np.asarray(functional, float), np.asarray(structural, float)
    if f.shape != s.shape:
        raise InputError(f"structural matrix is {s.shape}, region couplings are {f.shape}")
    iu = _upper(f.shape[0], include_diagonal)
    x, y = f[iu], s[iu]
    ok = np.isfinite(x) & np.isfinite(y) & (y != 0)
    if ok.sum() < 3:
        return float("nan"), int(ok.sum())
    rho = spearmanr(x[ok], y[ok]).statistic
    return float(rho), int(ok.sum())


def load_structural(path, region_names) -> np.ndarray:
    """Read a structural region matrix CSV and order it like ``region_names``.

    The CSV is regions x regions. A synthetic recording file (``.h5`` written by
    ``raysearch synth``) is accepted too: its planted ``/GroundTruth/structural`` matrix is used.
    With a header row and an index column of region names, rows and
    columns are matched by name (every name in ``region_names`` must be present). Without names it
    must be a bare R x R numeric table in the order of ``region_names``.

    Returns
    -------
    ndarray, shape (R, R)
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"structural matrix {path} does not exist")
    R = len(region_names)
    if path.suffix.lower() in (".h5", ".hdf5"):
        return _structural_from_synthetic(path, region_names)
    try:
        df = pd.read_csv(path, index_col=0)
        named = not all(_is_number(x) for x in df.columns)
    except Exception as exc:  # pandas raises many types for a malformed CSV
        raise InputError(f"cannot read structural matrix {path} as CSV: {exc}") from None
    if named:
        missing = [n for n in region_names if n not in df.index or n not in df.columns]
        if missing:
            raise InputError(
                f"structural matrix {path} lacks regions {missing[:5]} "
                f"(of {len(missing)}); its rows/columns must be named like the "
                "recording's region_names"
            )
        mat = df.loc[list(region_names), list(region_names)].to_numpy(dtype=float)
    else:
        mat = pd.read_csv(path, header=None).to_numpy(dtype=float)
        if mat.shape != (R, R):
            raise InputError(
                f"structural matrix {path} is {mat.shape}, expected ({R}, {R}) in the "
                "order of the recording's regions (or add a header and index of "
                "region names)"
            )
    if not np.all(np.isfinite(mat)):
        raise InputError(f"structural matrix {path} contains non-numeric or non-finite entries")
    return mat


def _structural_from_synthetic(path, region_names):
    from raysearch.data.synthetic import load_ground_truth

    gt = load_ground_truth(path)
    names = list(gt.region_names)
    missing = [n for n in region_names if n not in names]
    if missing:
        raise InputError(
            f"{path}: its ground truth lacks regions {missing[:5]}; is it the "
            "recording the models were fitted on?"
        )
    idx = [names.index(n) for n in region_names]
    return np.asarray(gt.structural, dtype=float)[np.ix_(idx, idx)]


def _is_number(x):
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False
