"""Benchmark: model-similarity matrix + PCA + k-means for many models (default 500 models,
N = 40,000 visible units, M = 200 hidden units, synthetic weights).

The models are generated one at a time from their index (two families of sparse structures, hidden
units shuffled, per-model noise), so that, like models streamed from disk, only the model being
processed is in memory. Measured:

1. the sketch route (``similarity_matrix(method="sketch")``) + kernel PCA + k-means on all K
   models: seconds and peak RSS; whether k-means recovers the two families;
2. the exact route (M x M products, O(N M^2) per pair) on ``--exact-models`` models at full N:
   seconds per pair, extrapolated to all K(K+1)/2 pairs; the sketch's error against it;
3. region couplings of one model (R = ``--regions`` random regions): seconds and peak RSS;
4. the dense route (form each N x N J, Gram of the flattened matrices) at a smaller N
   (``--dense-n``), timed and scaled by N^2 (J formation ~ K N^2 M, Gram ~ K^2 N^2 / 2) to full N.

Usage: python bench/bench_analysis.py [--models 500] [--n 40000] [--m 200] [--sketch-dim 32768]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import numpy as np


class SyntheticModels:
    """Lazy sequence of (W (M, N) float32, c (M,)) models from two families."""

    def __init__(self, K, N, M, density=0.02, seed=0):
        rng = np.random.default_rng(seed)
        self.K, self.N, self.M, self.seed = K, N, M, seed
        self.bases = []
        for _ in range(2):
            B = np.zeros((M, N), np.float32)
            nnz = int(density * N)
            for mu in range(M):
                idx = rng.choice(N, nnz, replace=False)
                B[mu, idx] = rng.uniform(0.5, 1.5, nnz) * rng.choice([-1, 1], nnz, p=[0.1, 0.9])
            self.bases.append(B)
        self.family = np.arange(K) % 2

    def __len__(self):
        return self.K

    def __getitem__(self, k):
        rng = np.random.default_rng([self.seed, k])
        W = self.bases[self.family[k]][rng.permutation(self.M)]
        n = int(0.01 * W.size)
        flat = W.reshape(-1)
        flat[rng.integers(0, W.size, n)] += rng.normal(0, 0.5, n).astype(np.float32)
        return W, rng.uniform(0.2, 1.0, self.M)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dense_route(models, K):
    """Similarity by forming each dense J (float32) and the Gram of the flattened matrices."""
    Js = []
    t0 = time.perf_counter()
    for k in range(K):
        W, c = models[k]
        J = (W.T * c.astype(np.float32)) @ W
        np.fill_diagonal(J, 0.0)
        Js.append(J.reshape(-1))
    t_form = time.perf_counter() - t0
    t0 = time.perf_counter()
    X = np.stack(Js)
    G = X @ X.T
    t_gram = time.perf_counter() - t0
    del X, Js
    return t_form, t_gram, G


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=500)
    ap.add_argument("--n", type=int, default=40000)
    ap.add_argument("--m", type=int, default=200)
    ap.add_argument("--sketch-dim", type=int, default=2**15)
    ap.add_argument("--exact-models", type=int, default=8)
    ap.add_argument("--dense-n", type=int, default=4000)
    ap.add_argument("--dense-models", type=int, default=8)
    ap.add_argument(
        "--regions", type=int, default=72, help="regions for the region-coupling timing"
    )
    ap.add_argument("--skip-extra", action="store_true", help="skip the exact and dense routes")
    args = ap.parse_args()

    import scipy
    import sklearn
    from sklearn.metrics import adjusted_rand_score

    from raysearch.analysis import embed_and_cluster, similarity_matrix

    K, N, M = args.models, args.n, args.m
    out = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "K": K,
        "N": N,
        "M": M,
        "sketch_dim": args.sketch_dim,
    }
    models = SyntheticModels(K, N, M)
    out["rss_after_setup_mb"] = round(peak_rss_mb())
    t0 = time.perf_counter()
    for k in range(min(K, 20)):
        models[k]
    out["generate_s_per_model"] = (time.perf_counter() - t0) / min(K, 20)

    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    sim = similarity_matrix(models, method="sketch", sketch_dim=args.sketch_dim)
    t_sim, c_sim = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    emb = embed_and_cluster(sim.pearson)
    t_clu = time.perf_counter() - t0
    out.update(
        sketch_similarity_s=round(t_sim, 2),
        sketch_similarity_cpu_s=round(c_sim, 2),
        loadavg_before=round(load0, 2),
        loadavg_after=round(os.getloadavg()[0], 2),
        pca_kmeans_s=round(t_clu, 2),
        total_s=round(t_sim + t_clu, 2),
        peak_rss_mb=round(peak_rss_mb()),
        n_clusters=emb.n_clusters,
        ari_vs_families=float(adjusted_rand_score(models.family, emb.labels)),
    )
    print(json.dumps(out), flush=True)

    # region couplings (mean |J_ij| per region pair, blockwise) of one model at full size
    from raysearch.analysis import region_couplings

    W, c = models[0]
    reg = np.random.default_rng(1).integers(0, args.regions, N)
    t0, c0 = time.perf_counter(), time.process_time()
    region_couplings(W, c, reg, n_regions=args.regions)
    out.update(
        regions=args.regions,
        region_couplings_s=round(time.perf_counter() - t0, 2),
        region_couplings_cpu_s=round(time.process_time() - c0, 2),
        peak_rss_mb_with_regions=round(peak_rss_mb()),
    )
    print(json.dumps(out), flush=True)
    if args.skip_extra:
        return

    # exact route on a few models at full size, and the sketch's error there
    ke = args.exact_models
    sub = SyntheticModels(ke, N, M)
    t0 = time.perf_counter()
    ex = similarity_matrix(sub, method="exact", dtype=np.float32)
    t_ex = time.perf_counter() - t0
    pairs = ke * (ke + 1) / 2
    all_pairs = K * (K + 1) / 2
    sk = similarity_matrix(sub, method="sketch", sketch_dim=args.sketch_dim)
    out.update(
        exact_models=ke,
        exact_s=round(t_ex, 2),
        exact_s_per_pair=t_ex / pairs,
        exact_extrapolated_s=round(t_ex / pairs * all_pairs),
        sketch_max_abs_err_pearson=float(np.abs(sk.pearson - ex.pearson).max()),
        peak_rss_mb_with_exact=round(peak_rss_mb()),
    )
    print(json.dumps(out), flush=True)

    # dense route at a smaller N, scaled to the full N
    nd, kd = args.dense_n, args.dense_models
    dm = SyntheticModels(kd, nd, M)
    t_form, t_gram, _ = dense_route(dm, kd)
    scale = (N / nd) ** 2
    est = t_form / kd * K * scale + t_gram / (kd * kd) * (K * K) * scale
    out.update(
        dense_n=nd,
        dense_models=kd,
        dense_form_s=round(t_form, 2),
        dense_gram_s=round(t_gram, 3),
        dense_extrapolated_s=round(est),
        dense_bytes_per_J_full_n=N * N * 4,
    )
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
