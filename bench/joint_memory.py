"""Peak memory of a joint (cross-subject) dataset: F synthetic whole fish on one voxel grid.

Usage: python bench/joint_memory.py [--fish 3] [--neurons 40000] [--frames 5500] [--voxel-um 10]
                                    [--updates 20] [--min-fish 1]

Builds the fish one at a time in memory (spikes only), builds the joint dataset, runs a few
training updates of a cRBM on it, and prints the peak resident set size (ru_maxrss) after each
step as JSON. The recordings are kept alive until the joint dataset is built (as a study does).
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fish", type=int, default=3)
    ap.add_argument("--neurons", type=int, default=40000)
    ap.add_argument("--frames", type=int, default=5500)
    ap.add_argument("--voxel-um", type=float, default=10.0)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument(
        "--min-fish",
        type=int,
        default=1,
        help="1 (default) keeps the union of voxels: the largest joint dataset",
    )
    ap.add_argument("--hidden", type=int, default=100)
    a = ap.parse_args()

    from raysearch.crbm import CRBM
    from raysearch.data.cohort import joint_dataset, make_synthetic_cohort

    out = {
        "min_fish": a.min_fish,
        "fish": a.fish,
        "neurons": a.neurons,
        "frames": a.frames,
        "voxel_um": a.voxel_um,
    }
    t = time.perf_counter()
    recs, truth = make_synthetic_cohort(
        n_fish=a.fish, n_neurons=a.neurons, n_frames=a.frames, n_shared=4, n_private=2, seed=0
    )
    out["make_s"] = round(time.perf_counter() - t, 1)
    out["peak_after_recordings_gib"] = round(peak_gib(), 3)
    t = time.perf_counter()
    jd = joint_dataset(recs, a.voxel_um, min_fish=a.min_fish, transform="zscore")
    out["joint_s"] = round(time.perf_counter() - t, 1)
    out["joint_shape_train"] = list(jd.train.shape)
    out["joint_gib"] = round((jd.train.nbytes + jd.test.nbytes) / 2**30, 3)
    out["peak_after_joint_gib"] = round(peak_gib(), 3)
    del recs, truth
    t = time.perf_counter()
    m = CRBM(
        n_hidden=a.hidden,
        visible="gaussian",
        lam=1e-3,
        n_updates=a.updates,
        batch_size=100,
        n_gibbs=1,
        seed=0,
        backend="numpy",
    ).fit(jd)
    out["train_s"] = round(time.perf_counter() - t, 1)
    out["updates"] = int(m.n_updates_done_)
    out["peak_after_training_gib"] = round(peak_gib(), 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
