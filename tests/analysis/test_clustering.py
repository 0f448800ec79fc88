"""PCA / k-means of models: two planted families are recovered, tables relate clusters to lambda."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from raysearch.analysis import cluster, cluster_table, embed_and_cluster, similarity_matrix


def _family_models(rng, n=150, m=8, per_family=6):
    """Two families of models: weights drawn around two different sparse structures, with the
    hidden units shuffled (the order of hidden units is arbitrary)."""
    bases = [rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.15) for _ in range(2)]
    models, fam = [], []
    for f, base in enumerate(bases):
        for _ in range(per_family):
            W = base + 0.3 * rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.3)
            W = W[rng.permutation(m)]
            models.append((W, rng.uniform(0.5, 1.5, m)))
            fam.append(f)
    order = rng.permutation(len(models))
    return [models[i] for i in order], np.array(fam)[order]


@pytest.mark.parametrize("method", ["exact", "sketch"])
def test_two_families_recovered(method):
    rng = np.random.default_rng(0)
    models, fam = _family_models(rng)
    sim = similarity_matrix(models, method=method, sketch_dim=2**14)
    within = sim.pearson[fam[:, None] == fam[None, :]]
    across = sim.pearson[fam[:, None] != fam[None, :]]
    assert within.min() > across.max()
    emb = embed_and_cluster(sim.pearson)
    assert emb.n_clusters == 2
    assert adjusted_rand_score(fam, emb.labels) == 1.0
    assert emb.coords.shape == (len(models), emb.coords.shape[1]) and emb.coords.shape[1] >= 2
    assert emb.silhouette[2] == max(emb.silhouette.values())


def test_given_k_and_tiny_sets():
    X = np.array([[0.0], [0.1], [5.0], [5.1], [10.0]])
    labels, k, scores = cluster(X, n_clusters=3)
    assert k == 3 and scores == {} and len(set(labels)) == 3
    labels, k, _ = cluster(X[:2])
    assert k == 1 and (labels == 0).all()


def test_cluster_table():
    df = pd.DataFrame(
        {
            "lam": [0.01, 0.02, 0.1, 0.2],
            "penalty": ["l1"] * 4,
            "bad": [False, False, True, False],
            "mean_nrmse": [0.2, 0.3, 0.9, 0.5],
            "seed": [0, 1, 0, 1],
        }
    )
    t = cluster_table(df, [0, 0, 1, 1])
    assert list(t["n_models"]) == [2, 2]
    assert t.loc[0, "lam_min"] == 0.01 and t.loc[0, "lam_max"] == 0.02
    assert t.loc[1, "n_bad"] == 1 and t.loc[1, "bad_share"] == 0.5
    assert t.loc[0, "penalties"] == "l1"
