"""Data subcommands: ``raysearch synth`` (write a synthetic fish) and ``raysearch inspect``.

Both are thin calls into :mod:`raysearch.data.synthetic` and :mod:`raysearch.data.recordings`. Errors on bad
input are :class:`raysearch.errors.RaysearchError` (printed without traceback, exit status 2), and
``synth`` writes to a temporary file that is renamed only when complete.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from raysearch.cli.train import json_line
from raysearch.errors import ConfigError, InputError


def register(sub):
    """Add ``synth``, ``synth-cohort`` and ``inspect`` to the argparse sub-parsers ``sub``."""
    p = sub.add_parser(
        "synth",
        help="write a synthetic fish (cRBM HDF5 layout + ground truth)",
        description="Write a synthetic larval-zebrafish recording with planted assemblies in the "
        "published cRBM HDF5 layout, plus a /GroundTruth group. Deterministic given "
        "the seed. A whole fish is --neurons 40000 --frames 5500.",
    )
    p.add_argument("out", metavar="OUT.h5", help="output file")
    p.add_argument("--neurons", type=int, default=5000, help="N (default 5000)")
    p.add_argument("--frames", type=int, default=3000, help="T (default 3000)")
    p.add_argument(
        "--assemblies",
        type=int,
        default=None,
        help="number of planted assemblies (default clip(N // 100, 4, 100))",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--frame-rate", type=float, default=4.0, help="Hz (default 4)")
    p.add_argument("--force", action="store_true", help="overwrite OUT.h5 if it exists")
    p.set_defaults(func=_synth)

    c = sub.add_parser(
        "synth-cohort",
        help="write a synthetic cohort (several fish sharing assemblies)",
        description="Write several synthetic fish registered to one reference brain, with their "
        "own neuron positions and rates, sharing planted assemblies (the same places "
        "in the reference frame) plus private ones per fish: DIR/fish<f>.h5 (cRBM "
        "layout, spikes, per-fish /GroundTruth) and DIR/cohort.json (which assemblies "
        "are shared).",
    )
    c.add_argument("out", metavar="DIR", help="output folder (must not exist unless --force)")
    c.add_argument("--fish", type=int, default=3, help="number of fish (default 3)")
    c.add_argument("--neurons", type=int, default=3000, help="N per fish (default 3000)")
    c.add_argument("--frames", type=int, default=2000, help="T per fish (default 2000)")
    c.add_argument("--shared", type=int, default=4, help="shared assemblies (default 4)")
    c.add_argument("--private", type=int, default=2, help="private assemblies per fish (default 2)")
    c.add_argument(
        "--radius-um",
        type=float,
        default=70.0,
        help="assembly radius in the reference frame (default 70)",
    )
    c.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    c.add_argument("--force", action="store_true", help="replace DIR if it exists")
    c.set_defaults(func=_synth_cohort)

    q = sub.add_parser(
        "inspect",
        help="summarise a recording file (layout, N, T, rates, regions, datasets)",
        description="Read a recording (cRBM, Fishualizer or NWB layout) and print what a user "
        "checks first.",
    )
    q.add_argument("file", metavar="FILE")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.add_argument(
        "--keep-unlabelled", action="store_true", help="keep neurons that are in no region"
    )
    q.add_argument(
        "--on-nonfinite",
        choices=("error", "drop"),
        default="error",
        help="NaN/inf in the activity: fail (default) or drop those neurons",
    )
    q.set_defaults(func=_inspect)


def _synth(args) -> int:
    from raysearch.data.synthetic import write_synthetic_recording

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(f"{out}: already exists; pass --force to overwrite it")
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"{out}: the output name must end in .h5 or .hdf5")
    t0 = time.perf_counter()
    write_synthetic_recording(
        out,
        n_neurons=args.neurons,
        n_frames=args.frames,
        n_assemblies=args.assemblies,
        seed=args.seed,
        frame_rate=args.frame_rate,
    )
    dt = time.perf_counter() - t0
    print(
        f"wrote {out}: synthetic fish, N = {args.neurons}, T = {args.frames}, seed "
        f"{args.seed} ({out.stat().st_size / 2**20:.1f} MiB, {dt:.1f} s)"
    )
    return 0


def _synth_cohort(args) -> int:
    from raysearch.data.cohort import write_synthetic_cohort

    t0 = time.perf_counter()
    files = write_synthetic_cohort(
        args.out,
        force=args.force,
        n_fish=args.fish,
        n_neurons=args.neurons,
        n_frames=args.frames,
        n_shared=args.shared,
        n_private=args.private,
        radius_um=args.radius_um,
        seed=args.seed,
    )
    print(
        f"wrote {args.out}: {len(files)} synthetic fish, N = {args.neurons}, T = "
        f"{args.frames}, {args.shared} shared + {args.private} private assemblies per fish, "
        f"seed {args.seed} ({time.perf_counter() - t0:.1f} s)"
    )
    return 0


def _inspect(args) -> int:
    from raysearch.data.recordings import load_recording

    rec = load_recording(
        args.file, drop_unlabelled=not args.keep_unlabelled, on_nonfinite=args.on_nonfinite
    )
    s = rec.summary()
    if args.json:
        print(json_line(s, indent=2))
        return 0
    rate = "n/a (no spikes)" if s["mean_spike_rate"] is None else f"{s['mean_spike_rate']:.4f}"
    lines = [
        f"file:        {s['source']}",
        f"layout:      {s['layout']}",
        f"neurons:     {s['n_neurons']} (dropped: {s['n_dropped']} in no region"
        + (f", {s['n_nonfinite_dropped']} with NaN/inf" if s["n_nonfinite_dropped"] else "")
        + ")",
        f"frames:      {s['n_frames']} ({s['duration_s']:.1f} s)",
        "frame rate:  "
        + (
            f"{s['frame_rate_hz']:.3f} Hz"
            if math.isfinite(s["frame_rate_hz"])
            else "unknown (fewer than 2 frames)"
        ),
        f"signals:     {', '.join(s['signals'])}",
        f"spike rate:  {rate} per neuron-frame",
        f"ref coords:  {'yes' if s['has_ref_coords'] else 'no'}",
        f"regions:     {len(s['regions'])} with neurons",
    ]
    width = max((len(k) for k in s["regions"]), default=0)
    lines += [f"  {k:<{width}}  {v}" for k, v in s["regions"].items()]
    lines.append("datasets:")
    lines += [f"  {k}  {tuple(v)}" for k, v in s["datasets"].items()]
    print("\n".join(lines))
    return 0
