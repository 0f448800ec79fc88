"""Benchmark of the data side on a whole-fish synthetic file.

Measures, each case in a fresh Python process so that its peak RSS (``ru_maxrss``) is its own:

* ``raysearch synth`` writing the file (wall seconds of the console command);
* load + voxelize + split: ``load_recording(signals=("spikes",))``, ``preprocess(voxel_um=...)``
  with the fixed and the percentile split;
* load both signals (spikes + dF/F);
* dF/F at single-neuron resolution, z-scored (the largest dataset: train + test float32).

Usage::

    python bench/bench_data.py [--neurons 40000] [--frames 5500] [--dir /tmp] [--keep]

Prints one JSON object per case and a Markdown table for BENCHMARKS.md. The reference size is one
dense float32 (T, N) array: 5,500 x 40,000 x 4 B = 880 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "load_spikes": "load spikes only",
    "load_voxelize_split": "load spikes + voxelize 20 um + fixed split",
    "load_voxelize_percentile": "load spikes + voxelize 20 um + percentile split",
    "load_both": "load spikes + dF/F",
    "dff_zscore": "load dF/F + z-score, single neurons, fixed split",
}


def run_case(case: str, path: str) -> dict:
    """Run one case in this process and return timings (call in a fresh process)."""
    import raysearch
    from raysearch.data.preprocessing import preprocess
    from raysearch.data.recordings import load_recording

    out = {"case": case}
    t0 = time.perf_counter()
    signals = {"load_both": ("spikes", "dff"), "dff_zscore": ("dff",)}.get(case, ("spikes",))
    rec = load_recording(path, signals=signals)
    out["load_s"] = time.perf_counter() - t0
    out["n_neurons"], out["n_frames"] = rec.n_neurons, rec.n_frames
    if case in ("load_voxelize_split", "load_voxelize_percentile", "dff_zscore"):
        t1 = time.perf_counter()
        if case == "dff_zscore":
            ds = preprocess(rec, signal="dff")
        else:
            ds = preprocess(
                rec,
                voxel_um=20.0,
                test_segments="percentile" if case.endswith("percentile") else (2, 6, 7),
            )
        out["preprocess_s"] = time.perf_counter() - t1
        out["n_units"] = ds.n_units
        out["test_segments"] = list(ds.test_segments)
    out["total_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["raysearch"] = raysearch.__version__
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--neurons", type=int, default=40_000)
    ap.add_argument("--frames", type=int, default=5_500)
    ap.add_argument("--dir", default=None, help="where to write the file (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic file")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:  # child process
        print(json.dumps(run_case(args.case, args.path)))
        return 0

    import h5py
    import numpy as np

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="raysearch-bench-"))
    path = workdir / f"fish_{args.neurons}x{args.frames}.h5"
    if path.exists():
        path.unlink()
    exe = [sys.executable, "-m", "raysearch"]
    t0 = time.perf_counter()
    subprocess.run(
        exe
        + [
            "synth",
            str(path),
            "--neurons",
            str(args.neurons),
            "--frames",
            str(args.frames),
            "--seed",
            "0",
        ],
        check=True,
    )
    synth_s = time.perf_counter() - t0
    results = [{"case": "synth", "total_s": synth_s, "file_mb": path.stat().st_size / 1e6}]
    ref_mb = args.frames * args.neurons * 4 / 1e6
    for case in CASES:
        # drop nothing from the page cache (not allowed without root on shared machines):
        # the file was just written, so reads come from the cache, as on a node that re-reads
        r = subprocess.run(
            [sys.executable, __file__, "--case", case, "--path", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
        res = json.loads(r.stdout.strip().splitlines()[-1])
        res["peak_vs_dense"] = res["peak_rss_mb"] / ref_mb
        results.append(res)
        print(json.dumps(res), flush=True)
    if not args.keep:
        path.unlink()

    import scipy

    print()
    print(
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"Python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__}, "
        f"scipy {scipy.__version__}, raysearch {results[-1].get('raysearch')}"
    )
    print(f"N = {args.neurons}, T = {args.frames}; one dense float32 (T, N) = {ref_mb:.0f} MB")
    print()
    print("| case | load s | preprocess s | total s | peak RSS MB | peak / dense |")
    print("|---|---|---|---|---|---|")
    print(f"| `raysearch synth` (write {results[0]['file_mb']:.0f} MB) | | | {synth_s:.1f} | | |")
    for r in results[1:]:
        pre = f"{r['preprocess_s']:.2f}" if "preprocess_s" in r else ""
        print(
            f"| {CASES[r['case']]} | {r['load_s']:.2f} | {pre} | {r['total_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_vs_dense']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
