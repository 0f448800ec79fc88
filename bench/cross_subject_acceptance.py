"""Issue 14's acceptance on the full synthetic cohort, without Ray: one joint cRBM and one cRBM per
fish on the common grid, then recovery of the shared assemblies, which fish express them, and the
per-fish matching. Prints one JSON line.

Usage: python bench/cross_subject_acceptance.py [--neurons 3000] [--frames 2000] [--updates 1500]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fish", type=int, default=3)
    ap.add_argument("--neurons", type=int, default=3000)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--shared", type=int, default=4)
    ap.add_argument("--private", type=int, default=2)
    ap.add_argument("--voxel-um", type=float, default=50.0)
    ap.add_argument("--updates", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from raysearch.analysis.cross_subject import (
        coupling_consistency,
        expressing_fish,
        fish_expression,
        recurrence,
        shared_recovery,
        truth_on_grid,
    )
    from raysearch.crbm import CRBM
    from raysearch.data.cohort import joint_dataset, make_synthetic_cohort
    from raysearch.evaluation import evaluate_joint

    t0 = time.perf_counter()
    recs, truth = make_synthetic_cohort(
        n_fish=a.fish,
        n_neurons=a.neurons,
        n_frames=a.frames,
        n_shared=a.shared,
        n_private=a.private,
        seed=a.seed,
    )
    jd = joint_dataset(recs, a.voxel_um, transform="zscore")
    kw = dict(
        visible="gaussian",
        lam=0.003,
        n_gibbs=1,
        batch_size=100,
        learning_rate=5e-3,
        seed=0,
        backend="numpy",
        n_updates=a.updates,
    )
    K = truth.n_assemblies
    joint = CRBM(n_hidden=K + 6, **kw).fit(jd)
    rec = shared_recovery(joint, truth_on_grid(truth, jd), truth.shared)
    rel = expressing_fish(fish_expression(joint, jd))
    cols = [f"rel_{n}" for n in jd.fish_names]
    told = []
    for k in range(K):
        mu = rec.loc[k, "best_unit"]
        told.append(bool(((rel.loc[mu, cols].to_numpy() >= 0.3) == truth.expressed[:, k]).all()))
    per = [
        CRBM(n_hidden=a.shared + a.private + 4, **kw).fit(jd.fish_dataset(f))
        for f in range(jd.n_fish)
    ]
    pf = [
        shared_recovery(m, truth_on_grid(truth, jd, fish=f), truth.shared)
        for f, m in enumerate(per)
    ]
    shared = np.flatnonzero(truth.shared)
    best = np.array([r["best_unit"].to_numpy() for r in pf])
    cos = np.array([r["abs_cosine"].to_numpy() for r in pf])
    share, pairs = recurrence(per, jd.fish_names)
    linked = 0
    total = 0
    for i in range(jd.n_fish):
        for j in range(jd.n_fish):
            if i != j:
                p = pairs[(pairs.fish_a == jd.fish_names[i]) & (pairs.fish_b == jd.fish_names[j])]
                pb = dict(zip(p.unit_a, p.unit_b))
                linked += sum(pb[best[i, k]] == best[j, k] for k in shared)
                total += len(shared)
    _, cons = coupling_consistency(per, jd.unit_region, len(jd.region_names), jd.fish_names)
    ev = evaluate_joint(joint, jd, n_chains=100, n_burnin=200, n_samples=20, n_between=10)
    off = ~np.eye(jd.n_fish, dtype=bool)
    print(
        json.dumps(
            {
                "n_units": jd.n_units,
                "n_train": jd.n_train,
                "updates": a.updates,
                "joint_shared_mean_cos": float(rec.loc[rec.shared, "abs_cosine"].mean()),
                "joint_shared_min_cos": float(rec.loc[rec.shared, "abs_cosine"].min()),
                "joint_private_cos": rec.loc[~rec.shared, "abs_cosine"].round(3).tolist(),
                "expressing_fish_correct": told,
                "per_fish_shared_cos_mean": float(cos[:, shared].mean()),
                "per_fish_shared_cos_min": float(cos[:, shared].min()),
                "matching_links_shared": f"{linked}/{total}",
                "recurrence_offdiag_mean": float(share.to_numpy()[off].mean()),
                "coupling_consistency_offdiag_mean": float(cons.to_numpy()[off].mean()),
                "nrmse_overall_mean": ev["overall"].mean_nrmse,
                "nrmse_per_fish_mean": {k: r.mean_nrmse for k, r in ev["fish"].items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
