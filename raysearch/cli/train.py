"""``raysearch train``: fit one cRBM to a recording, evaluate it on held-out frames, save it.

A thin layer over the library: :func:`raysearch.recordings.load_recording` (or a synthetic fish),
:func:`raysearch.preprocessing.preprocess`, :class:`raysearch.crbm.CRBM`,
:func:`raysearch.evaluation.evaluate`. Progress (rate, ETA, a health figure) goes to stderr through
tqdm; stdout gets exactly one JSON line with the metrics at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from raysearch.errors import ConfigError, InputError

SYNTHETIC = "synthetic"


def register(sub):
    """Add ``train`` to the argparse sub-parsers ``sub``."""
    p = sub.add_parser(
        "train", help="fit one cRBM, evaluate it on held-out segments, save the model file",
        description="Load a recording (or DATA = 'synthetic' for a default synthetic fish), "
                    "preprocess it, fit a compositional RBM with a progress display, evaluate "
                    "it on the held-out segments and save it (HDF5). Prints one JSON line with "
                    "the metrics on stdout.")
    p.add_argument("data", metavar="DATA", help="recording file (cRBM/Fishualizer HDF5 or NWB), "
                                                "or the word 'synthetic'")
    p.add_argument("--out", required=True, metavar="MODEL.h5", help="model file to write")
    g = p.add_argument_group("model")
    g.add_argument("--lam", type=float, default=0.001,
                   help="sparsity strength lambda (0.001: recovers the synthetic fish's assemblies "
                        "at N = 300-1000, where 0.01 and above shrink every weight to 0; search "
                        "lambda for your data with 'raysearch run')")
    g.add_argument("--penalty", choices=("l2l1", "l1"), default="l2l1", help="penalty (l2l1)")
    g.add_argument("--hidden", type=int, default=100, help="hidden units M (100)")
    g.add_argument("--updates", type=int, default=20000,
                   help="gradient updates (20000: the low end of the authors' 20k-80k rule)")
    g.add_argument("--batch", type=int, default=100, help="minibatch size = chains (100)")
    g.add_argument("--gibbs", type=int, default=15, help="Gibbs steps per update (15)")
    g.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default 5e-3 bernoulli, 1e-3 gaussian)")
    g.add_argument("--visible", choices=("bernoulli", "gaussian"), default=None,
                   help="visible units (default: bernoulli for spikes, gaussian for z-scored dF/F)")
    g.add_argument("--backend", default="auto", choices=("auto", "numpy", "cupy"),
                   help="array backend (auto: CuPy when a GPU is visible)")
    g.add_argument("--seed", type=int, default=0, help="random seed (0)")
    g.add_argument("--jobs", type=int, default=1,
                   help="threads advancing the persistent chains on a CPU (1; the number of cores "
                        "of a machine of your own is faster; part of the result like the seed)")
    d = p.add_argument_group("data")
    d.add_argument("--signal", choices=("spikes", "dff"), default="spikes",
                   help="which activity to model (spikes)")
    d.add_argument("--voxel-um", type=float, default=None,
                   help="average neurons in voxels of this edge (um); default single neurons")
    d.add_argument("--test-segments", default="2,6,7",
                   help="held-out segments of 10, e.g. '2,6,7' (default), or 'percentile'")
    d.add_argument("--synthetic-neurons", type=int, default=1000,
                   help="N of the synthetic fish when DATA is 'synthetic' (1000)")
    d.add_argument("--synthetic-frames", type=int, default=2000,
                   help="T of the synthetic fish when DATA is 'synthetic' (2000)")
    e = p.add_argument_group("evaluation and output")
    e.add_argument("--eval-chains", type=int, default=300,
                   help="independent model chains for the held-out evaluation (300)")
    e.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    e.add_argument("--checkpoint", metavar="CK.h5", default=None,
                   help="save the training state here every 1000 updates (resume with --resume)")
    e.add_argument("--resume", metavar="CK.h5", default=None,
                   help="continue a fit from a checkpoint written with the same settings")
    e.add_argument("--force", action="store_true", help="overwrite MODEL.h5 if it exists")
    e.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_train)


def _test_segments(text):
    if text == "percentile":
        return "percentile"
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--test-segments {text!r}: give comma-separated segment indices "
                          "(e.g. 2,6,7) or 'percentile'") from None


def _load(args):
    if args.data == SYNTHETIC:
        from raysearch.synthetic import make_synthetic_recording

        rec, _ = make_synthetic_recording(n_neurons=args.synthetic_neurons,
                                          n_frames=args.synthetic_frames, seed=args.seed)
        return rec
    from raysearch.recordings import load_recording

    return load_recording(args.data, signals=(args.signal,))


def _train(args) -> int:
    from tqdm import tqdm

    from raysearch.crbm import CRBM
    from raysearch.preprocessing import preprocess

    out = Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"--out {out}: the model file name must end in .h5 or .hdf5")
    if out.exists() and not args.force:
        raise InputError(f"{out}: already exists; pass --force to overwrite it")
    # settings first, so a bad one fails before any data is read
    CRBM(n_hidden=args.hidden, visible=args.visible or "bernoulli", penalty=args.penalty,
         lam=args.lam, n_updates=args.updates, batch_size=args.batch, n_gibbs=args.gibbs,
         learning_rate=args.lr, seed=args.seed, backend=args.backend,
         n_jobs=args.jobs)._check_settings()
    rec = _load(args)
    ds = preprocess(rec, signal=args.signal, voxel_um=args.voxel_um, visible=args.visible,
                    test_segments=_test_segments(args.test_segments), seed=args.seed)
    model = CRBM(n_hidden=args.hidden, visible=ds.visible, penalty=args.penalty, lam=args.lam,
                 n_updates=args.updates, batch_size=args.batch, n_gibbs=args.gibbs,
                 learning_rate=args.lr, seed=args.seed, backend=args.backend, n_jobs=args.jobs)
    every = max(1, min(100, args.updates // 100))
    bar = tqdm(total=args.updates, unit="upd", file=sys.stderr, disable=args.quiet,
               desc=f"cRBM N={ds.n_units} M={args.hidden} lam={args.lam:g}", dynamic_ncols=True)

    def progress(p):
        bar.update(p["updates"] - bar.n)
        bar.set_postfix(recon=f"{p['health']:.4f}", lr=f"{p['lr']:.1e}", refresh=False)

    try:
        model.fit(ds, callback=progress, callback_every=every,
                  checkpoint=(args.checkpoint, 1000) if args.checkpoint else None,
                  resume_from=args.resume)
    finally:
        bar.close()
    result = {"model": str(out), "data": str(args.data), "n_units": int(ds.n_units),
              "n_train": int(ds.n_train), "n_test": int(ds.n_test), "visible": ds.visible,
              "n_hidden": args.hidden, "lam": args.lam, "penalty": args.penalty,
              "seed": args.seed, "updates": model.n_updates_done_,
              "seconds": round(model.fit_seconds_, 3), "diverged": bool(model.diverged_),
              "diverged_reason": str(getattr(model, "diverged_reason_", "")),
              "backend": model._backend().name}
    if not args.no_eval:
        from raysearch.evaluation import evaluate

        if not args.quiet:
            print("evaluating on the held-out segments ...", file=sys.stderr)
        metrics = evaluate(model, ds, n_chains=args.eval_chains, seed=args.seed)
        result.update(metrics.to_dict())
    model.save(out, dataset=ds)
    print(json.dumps(result, default=_jsonable))
    return 0


def _jsonable(x):
    try:
        return x.item()          # numpy scalars
    except AttributeError:
        return str(x)
