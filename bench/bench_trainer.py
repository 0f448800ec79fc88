"""Seconds per PCD update of the cRBM trainer, with achieved and peak float32 GFLOP/s.

    python bench/bench_trainer.py                       # N in {1000, 5000, 20000} x M in {100, 200}
    python bench/bench_trainer.py --backend cupy --sizes 40000x200
    python bench/bench_trainer.py --sizes 5000x100 --updates 50
    python bench/bench_trainer.py --threads 1 --jobs 2     # as CRBM(n_jobs=2) on 2 cores
    RAYSEARCH_CPU_KERNELS=0 python bench/bench_trainer.py  # NumPy's generic path (no numba kernels)
    python bench/bench_trainer.py --compare-generic     # both paths in the same run, and their ratio

One JSON line per (N, M) on stdout. Data: random binary frames at 4% ones (the spike density of the
fish recordings), T = 1000 frames; batch 100, 100 chains, 15 Gibbs steps, l2l1 penalty. The timed
loop is exactly the estimator's inner loop (``training.minibatches`` and ``training.pcd_update``
on the backend), after a few warm-up updates, with a device synchronisation before the clock is
read; ``s_per_update`` is the best of ``--repeats`` timed blocks, ``s_per_update_median`` their
median (on a shared machine the best block is the least disturbed one). FLOPs per update are
counted as 2 B N M (2 n_gibbs + 4) (the matrix products); the float32 matmul GFLOP/s of the same
machine (best of 10 products) is measured in the same run, just before each size.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time

import numpy as np

from raysearch import __version__
from raysearch.backend import get_backend
from raysearch.crbm import training

# The reference CPU implementation (PGM, numba) on this kind of machine (2 cores), issue 3.
REFERENCE_S_PER_UPDATE = {(5000, 100): 0.061, (20000, 200): 0.67}


def matmul_gflops(bk, n=2048, repeats=10):
    """Best float32 GEMM rate (GFLOP/s) of an n x n x n product on the backend."""
    xp = bk.xp
    a = bk.asarray(np.random.default_rng(0).standard_normal((n, n)).astype(np.float32))
    b = bk.asarray(np.random.default_rng(1).standard_normal((n, n)).astype(np.float32))
    a @ b
    bk.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        c = a @ b
        bk.synchronize()
        best = min(best, time.perf_counter() - t)
    del c, xp
    return 2 * n**3 / best / 1e9


def bench_one(
    bk,
    N,
    M,
    batch=100,
    n_gibbs=15,
    updates=None,
    T=1000,
    seed=0,
    min_seconds=1.0,
    repeats=5,
    jobs=1,
):
    """Seconds per update: (best, median) over ``repeats`` timed blocks of ``updates`` updates
    (default: as many as take about ``min_seconds``). The best block is the least disturbed by
    other processes on a shared machine; the median shows how disturbed it was."""
    rng = np.random.default_rng(seed)
    X = (rng.random((T, N)) < 0.04).astype(np.float32)
    mom = training.data_moments(X, "bernoulli")
    cfg = training.TrainConfig(
        visible="bernoulli",
        penalty="l2l1",
        lam=0.05,
        n_gibbs=n_gibbs,
        learning_rate=5e-3,
        n_updates=10**6,
        seed=seed,
        n_groups=jobs,
    )
    params = {k: bk.asarray(v) for k, v in training.init_params(mom, M, "bernoulli", seed).items()}
    moments = training.init_moments(params, bk)
    chains = bk.asarray(training.init_chains(mom, batch, "bernoulli", seed))
    mdata = {k: bk.asarray(v) for k, v in mom.items()}
    Xd = bk.asarray(X)

    executor = None
    if jobs > 1 and bk.name == "numpy":  # as CRBM(n_jobs=jobs).fit does
        from concurrent.futures import ThreadPoolExecutor

        executor = ThreadPoolExecutor(jobs)

    def run(start, n):
        nonlocal params, moments, chains
        for u, xb in training.minibatches(Xd, start, start + n, batch, seed, bk):
            params, moments, chains = training.pcd_update(
                params, moments, chains, xb, mdata, u, cfg, bk, executor
            )
        bk.synchronize()

    t = time.perf_counter()
    run(0, 3)  # warm-up (and a first estimate)
    first = (time.perf_counter() - t) / 3
    n = updates or max(3, int(min_seconds / max(first, 1e-6)))
    times, start = [], 3
    for _ in range(repeats):
        t = time.perf_counter()
        run(start, n)
        times.append((time.perf_counter() - t) / n)
        start += n
    if executor is not None:
        executor.shutdown()
    return min(times), float(np.median(times)), n * repeats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numpy")
    ap.add_argument(
        "--sizes",
        nargs="*",
        default=["1000x100", "1000x200", "5000x100", "5000x200", "20000x100", "20000x200"],
    )
    ap.add_argument(
        "--updates", type=int, default=None, help="updates per timed block (default: ~1 s worth)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed blocks; the best is reported")
    ap.add_argument("--gibbs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="chain threads, as CRBM(n_jobs=...) (use with --threads 1)",
    )
    ap.add_argument(
        "--compare-generic",
        action="store_true",
        help="also time NumPy's generic code path (compiled CPU kernels off) in the "
        "same run, alternating with the kernel path, and report the ratio",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="limit BLAS threads (threadpoolctl); default: the library's own choice",
    )
    args = ap.parse_args(argv)
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    bk = get_backend(args.backend)
    env = {
        "backend": bk.name,
        "cpu_kernels": bk.cpu_kernels is not None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "raysearch": __version__,
    }
    for s in args.sizes:
        N, M = (int(x) for x in s.lower().split("x"))
        peak = matmul_gflops(bk, n=8192 if bk.is_device else 2048)  # same run, just before
        dt, med, n = bench_one(
            bk,
            N,
            M,
            batch=args.batch,
            n_gibbs=args.gibbs,
            updates=args.updates,
            repeats=args.repeats,
            jobs=args.jobs,
        )
        generic = None
        if args.compare_generic and bk.cpu_kernels is not None:
            # alternate: generic, kernels again; keep the best of each (a shared machine's noise
            # then hits both alike)
            generic = bench_one(
                bk.without_cpu_kernels(),
                N,
                M,
                batch=args.batch,
                n_gibbs=args.gibbs,
                updates=args.updates,
                repeats=args.repeats,
                jobs=args.jobs,
            )
            again = bench_one(
                bk,
                N,
                M,
                batch=args.batch,
                n_gibbs=args.gibbs,
                updates=args.updates,
                repeats=args.repeats,
                jobs=args.jobs,
            )
            if again[0] < dt:
                dt, med = again[0], again[1]
        flops = 2 * args.batch * N * M * (2 * args.gibbs + 4)
        row = {
            "bench": "trainer",
            "N": N,
            "M": M,
            "batch": args.batch,
            "n_gibbs": args.gibbs,
            "timed_updates": n,
            "s_per_update": round(dt, 5),
            "s_per_update_median": round(med, 5),
            "gflops": round(flops / dt / 1e9, 2),
            "matmul_gflops": round(peak, 2),
            "fraction_of_matmul_peak": round(flops / dt / 1e9 / peak, 3),
            "blas_threads": args.threads or "default",
            "chain_threads": args.jobs,
            "loadavg_1min": round(os.getloadavg()[0], 2),
            **env,
        }
        if generic is not None:
            row["s_per_update_generic"] = round(generic[0], 5)
            row["speedup_vs_generic"] = round(generic[0] / dt, 2)
        ref = REFERENCE_S_PER_UPDATE.get((N, M))
        if ref is not None and args.batch == 100 and args.gibbs == 15:
            row["reference_s_per_update"] = ref
            row["speedup_vs_reference"] = round(ref / dt, 2)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
