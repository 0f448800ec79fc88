"""PCA and k-means of models from their pairwise similarity, and what the clusters go with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raysearch.errors import ConfigError


@dataclass
class Embedding:
    """Models embedded by kernel PCA of their similarity matrix, and their k-means clusters.

    Attributes
    ----------
    coords : ndarray, shape (K, n_components)
    explained : ndarray, shape (n_components,)
        Share of the (centred) kernel's variance carried by each component.
    labels : ndarray of int, shape (K,)
    n_clusters : int
    silhouette : dict {k: score}
        Silhouette score of each k tried (empty when k was given or K < 3).
    """

    coords: np.ndarray
    explained: np.ndarray
    labels: np.ndarray
    n_clusters: int
    silhouette: dict


def embed(similarity, n_components=None, var_target=0.9, max_components=10):
    """Kernel PCA with the similarity matrix as a precomputed kernel.

    A correlation (or cosine) matrix is the Gram matrix of the normalised coupling vectors, so
    kernel PCA of it is the PCA of the models' (normalised) coupling matrices.

    Parameters
    ----------
    similarity : ndarray, shape (K, K)
    n_components : int, optional
        Default: the fewest components reaching ``var_target`` of the variance, at most
        ``max_components`` (and at least 2 when K > 2).

    Returns
    -------
    coords : ndarray, shape (K, n)
    explained : ndarray, shape (n,)
    """
    from sklearn.decomposition import KernelPCA

    S = np.asarray(similarity, dtype=np.float64)
    K = S.shape[0]
    if not np.all(np.isfinite(S)):
        raise ConfigError("similarity matrix has NaN entries (a model with constant couplings?)")
    S = 0.5 * (S + S.T)
    n_max = max(1, min(K - 1, max_components))
    kpca = KernelPCA(n_components=n_max, kernel="precomputed", eigen_solver="dense")
    coords = kpca.fit_transform(S)
    ev = np.clip(kpca.eigenvalues_, 0, None)
    H = np.eye(K) - 1.0 / K
    total = float(np.trace(H @ S @ H))
    explained = ev / total if total > 0 else np.zeros_like(ev)
    if n_components is None:
        cum = np.cumsum(explained)
        n_components = int(np.searchsorted(cum, var_target) + 1)
        n_components = max(min(2, n_max), min(n_components, n_max))
    return coords[:, :n_components], explained[:n_components]


def cluster(coords, n_clusters=None, k_max=8, seed=0):
    """k-means on the embedding; k chosen by silhouette score unless given.

    Returns
    -------
    labels : ndarray of int, shape (K,)
    k : int
    scores : dict {k: silhouette}
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    X = np.asarray(coords, dtype=np.float64)
    K = X.shape[0]
    if n_clusters is not None:
        if not 1 <= n_clusters <= K:
            raise ConfigError(
                f"n_clusters must be between 1 and the number of models ({K}), got {n_clusters}"
            )
        km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(X)
        return km.labels_, int(n_clusters), {}
    if K < 3:
        return np.zeros(K, dtype=int), 1, {}
    scores, fits = {}, {}
    for k in range(2, min(k_max, K - 1) + 1):
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(X)
        if len(set(km.labels_)) < 2:
            continue
        scores[k] = float(silhouette_score(X, km.labels_))
        fits[k] = km.labels_
    if not scores:
        return np.zeros(K, dtype=int), 1, scores
    best = max(scores, key=scores.get)
    return fits[best], int(best), scores


def embed_and_cluster(similarity, n_clusters=None, n_components=None, seed=0) -> Embedding:
    """:func:`embed` then :func:`cluster`.

    Runs single-threaded: for K x K problems (K up to a few thousand models) thread start-up and
    spinning cost more than they save, by 15x on a loaded 2-core machine (measured).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        coords, explained = embed(similarity, n_components=n_components)
        labels, k, scores = cluster(coords, n_clusters=n_clusters, seed=seed)
    return Embedding(coords, explained, np.asarray(labels), k, scores)


def cluster_table(results: pd.DataFrame, labels) -> pd.DataFrame:
    """What each cluster goes with: lambda range, penalties, bad share, nRMSE.

    Parameters
    ----------
    results : DataFrame
        One row per model (in the order of ``labels``) with columns ``lam``, and optionally
        ``penalty``, ``bad``, ``mean_nrmse``, ``seed``.
    labels : array of int, shape (K,)

    Returns
    -------
    DataFrame, one row per cluster.
    """
    df = results.reset_index(drop=True).copy()
    df["cluster"] = np.asarray(labels)
    rows = []
    for k, g in df.groupby("cluster", sort=True):
        row = {"cluster": int(k), "n_models": len(g)}
        if "lam" in g:
            lam = g["lam"].astype(float)
            row.update(lam_min=lam.min(), lam_median=lam.median(), lam_max=lam.max())
        if "penalty" in g:
            row["penalties"] = ";".join(sorted(map(str, g["penalty"].dropna().unique())))
        if "bad" in g:
            bad = g["bad"].astype(bool)
            row.update(n_bad=int(bad.sum()), bad_share=float(bad.mean()))
        if "mean_nrmse" in g:
            row["mean_nrmse_median"] = float(g["mean_nrmse"].astype(float).median())
        if "seed" in g:
            row["n_seeds"] = int(g["seed"].nunique())
        rows.append(row)
    return pd.DataFrame(rows)
