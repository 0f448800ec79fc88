"""``raysearch train``: fit one cRBM to a recording, evaluate it on held-out frames, save it.

A thin layer over the library: :func:`raysearch.data.recordings.load_recording` (or a synthetic fish),
:func:`raysearch.data.preprocessing.preprocess`, :class:`raysearch.crbm.CRBM`,
:func:`raysearch.evaluation.evaluate`. Progress (rate, ETA, a health figure) goes to stderr through
tqdm; stdout gets exactly one JSON line with the metrics at the end.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from raysearch.errors import ConfigError, InputError, RaysearchError

SYNTHETIC = "synthetic"


def register(sub):
    """Add ``train`` to the argparse sub-parsers ``sub``."""
    p = sub.add_parser(
        "train",
        help="fit one cRBM, evaluate it on held-out segments, save the model file",
        description="Load a recording (or DATA = 'synthetic' for a default synthetic fish), "
        "preprocess it, fit a compositional RBM with a progress display, evaluate "
        "it on the held-out segments and save it (HDF5). Prints one JSON line with "
        "the metrics on stdout.",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="recording file (cRBM/Fishualizer HDF5 or NWB), or the word 'synthetic'",
    )
    p.add_argument("--out", required=True, metavar="MODEL.h5", help="model file to write")
    g = p.add_argument_group("model")
    g.add_argument(
        "--lam",
        type=float,
        default=0.001,
        help="sparsity strength lambda (0.001: recovers the synthetic fish's assemblies "
        "at N = 300-1000, where 0.01 and above shrink every weight to 0; search "
        "lambda for your data with 'raysearch run')",
    )
    g.add_argument("--penalty", choices=("l2l1", "l1"), default="l2l1", help="penalty (l2l1)")
    g.add_argument("--hidden", type=int, default=100, help="hidden units M (100)")
    g.add_argument(
        "--updates",
        type=int,
        default=20000,
        help="gradient updates (20000: the low end of the authors' 20k-80k rule)",
    )
    g.add_argument("--batch", type=int, default=100, help="minibatch size = chains (100)")
    g.add_argument("--gibbs", type=int, default=15, help="Gibbs steps per update (15)")
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="initial learning rate (default 5e-3 bernoulli, 1e-3 gaussian)",
    )
    g.add_argument(
        "--visible",
        choices=("bernoulli", "gaussian"),
        default=None,
        help="visible units (default: bernoulli for spikes, gaussian for z-scored dF/F)",
    )
    g.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "numpy", "cupy"),
        help="array backend (auto: CuPy when a GPU is visible)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (0)")
    g.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="threads advancing the persistent chains on a CPU (1; the number of cores "
        "of a machine of your own is faster; part of the result like the seed)",
    )
    d = p.add_argument_group("data")
    d.add_argument(
        "--signal",
        choices=("spikes", "dff"),
        default="spikes",
        help="which activity to model (spikes)",
    )
    d.add_argument(
        "--voxel-um",
        type=float,
        default=None,
        help="average neurons in voxels of this edge (um); default single neurons",
    )
    d.add_argument(
        "--transform",
        choices=("auto", "binarize", "zscore", "none"),
        default="auto",
        help="auto (default): spikes as 0/1, dF/F z-scored; binarize: 0/1 at "
        "--threshold (e.g. --signal dff --transform binarize)",
    )
    d.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="binarisation threshold for --transform binarize (0.5)",
    )
    d.add_argument(
        "--on-nonfinite",
        choices=("error", "drop"),
        default="error",
        help="NaN/inf in the activity: fail (default) or drop those neurons",
    )
    d.add_argument(
        "--test-segments",
        default="2,6,7",
        help="held-out segments of 10, e.g. '2,6,7' (default), or 'percentile'",
    )
    d.add_argument(
        "--synthetic-neurons",
        type=int,
        default=1000,
        help="N of the synthetic fish when DATA is 'synthetic' (1000)",
    )
    d.add_argument(
        "--synthetic-frames",
        type=int,
        default=2000,
        help="T of the synthetic fish when DATA is 'synthetic' (2000)",
    )
    e = p.add_argument_group("evaluation and output")
    e.add_argument(
        "--eval-chains",
        type=int,
        default=300,
        help="independent model chains for the held-out evaluation (300)",
    )
    e.add_argument("--no-eval", action="store_true", help="skip the held-out evaluation")
    e.add_argument(
        "--checkpoint",
        metavar="CK.h5",
        default=None,
        help="save the training state here every 1000 updates (resume with --resume); "
        "an existing file is replaced only when it is a checkpoint of this fit "
        "(same settings and data) or with --force; never the input recording",
    )
    e.add_argument(
        "--resume",
        metavar="CK.h5",
        default=None,
        help="continue a fit from a checkpoint written with the same settings on the same data",
    )
    e.add_argument(
        "--force",
        action="store_true",
        help="overwrite MODEL.h5 (and a --checkpoint file that is not a checkpoint of "
        "this fit) if it exists",
    )
    e.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=_train)


def _test_segments(text):
    if text == "percentile":
        return "percentile"
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(
            f"--test-segments {text!r}: give comma-separated segment indices "
            "(e.g. 2,6,7) or 'percentile'"
        ) from None


def _load(args):
    if args.data == SYNTHETIC:
        from raysearch.data.synthetic import make_synthetic_recording

        rec, _ = make_synthetic_recording(
            n_neurons=args.synthetic_neurons, n_frames=args.synthetic_frames, seed=args.seed
        )
        return rec
    from raysearch.data.recordings import load_recording

    return load_recording(args.data, signals=(args.signal,), on_nonfinite=args.on_nonfinite)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_output_path(path: Path, option: str) -> None:
    """An output file can be created at ``path``: its first existing ancestor is a writable
    directory and ``path`` itself is not a directory."""
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory; give a file name")
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            f"{option} {path}: {parent} is not a directory, so the file cannot be created there"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: no permission to write in {parent}")


def _check_paths(args) -> None:
    """Every path argument, before any work: the model file and the checkpoint must be creatable,
    distinct, and never the input recording (or the checkpoint to resume from); an existing
    --checkpoint file that is not a raysearch checkpoint needs --force."""
    out = Path(args.out)
    if out.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"--out {out}: the model file name must end in .h5 or .hdf5")
    data = None if args.data == SYNTHETIC else Path(args.data)
    if data is not None and _same_file(out, data):
        raise ConfigError(f"--out {out} is the input recording; choose another model file name")
    if out.exists() and not args.force:
        raise InputError(f"{out}: already exists; pass --force to overwrite it")
    _check_output_path(out, "--out")
    if args.resume is not None and _same_file(out, Path(args.resume)):
        raise ConfigError(
            f"--out {out} is the checkpoint given to --resume; choose another model file name"
        )
    if args.checkpoint is None:
        return
    from raysearch.crbm.io import is_checkpoint_file

    ck = Path(args.checkpoint)
    if ck.suffix.lower() not in (".h5", ".hdf5"):
        raise ConfigError(f"--checkpoint {ck}: the checkpoint file name must end in .h5 or .hdf5")
    if ck.resolve() == out.resolve() or _same_file(ck, out):
        raise ConfigError(f"--checkpoint {ck} is the same file as --out; give them different names")
    if data is not None and _same_file(ck, data):
        raise ConfigError(
            f"--checkpoint {ck} is the input recording; it would be overwritten. "
            "Choose another checkpoint file name"
        )
    _check_output_path(ck, "--checkpoint")
    if ck.exists() and not args.force and not is_checkpoint_file(ck):
        raise InputError(
            f"--checkpoint {ck}: the file exists and is not a raysearch checkpoint; "
            "it would be overwritten. Choose another name or pass --force"
        )


def _check_checkpoint_owner(args, model, ds) -> None:
    """An existing --checkpoint file (not the one resumed from) must be a checkpoint of this fit:
    same settings and same training data; else --force is needed to overwrite it."""
    ck = Path(args.checkpoint)
    if args.force or not ck.exists():
        return
    if args.resume is not None and _same_file(ck, Path(args.resume)):
        return  # continuing that fit; fit() checks settings and data on resume
    from raysearch.crbm.io import data_fingerprint, read_checkpoint

    state = read_checkpoint(ck)
    keys = (
        "n_hidden",
        "visible",
        "penalty",
        "lam",
        "n_updates",
        "batch_size",
        "n_gibbs",
        "learning_rate",
        "seed",
        "n_jobs",
    )
    mine = model.get_params()
    same = all(state["settings"].get(k) == mine[k] for k in keys)
    fp = state.get("data_fingerprint")
    if not same or fp is None or fp != data_fingerprint(model._check_data(ds)):
        raise InputError(
            f"--checkpoint {ck}: the file is a checkpoint of another fit (other "
            "settings or data) and would be overwritten; continue that fit with "
            "--resume, choose another name, or pass --force"
        )


def _check_args(args) -> None:
    """Numbers that are only used late (evaluation, synthetic data) are checked first."""
    if not args.no_eval and args.eval_chains < 1:
        raise ConfigError(f"--eval-chains must be >= 1, got {args.eval_chains} (or pass --no-eval)")
    if args.data == SYNTHETIC:
        if args.synthetic_neurons < 10:
            raise ConfigError(f"--synthetic-neurons must be >= 10, got {args.synthetic_neurons}")
        if args.synthetic_frames < 100:
            raise ConfigError(f"--synthetic-frames must be >= 100, got {args.synthetic_frames}")
    if args.voxel_um is not None and not (math.isfinite(args.voxel_um) and args.voxel_um > 0):
        raise ConfigError(f"--voxel-um must be a number > 0, got {args.voxel_um}")
    if not math.isfinite(args.threshold):
        raise ConfigError(f"--threshold must be a finite number, got {args.threshold}")
    if args.resume is not None and not Path(args.resume).is_file():
        raise InputError(f"--resume {args.resume}: no such file")
    _test_segments(args.test_segments)


def _train(args) -> int:
    from tqdm import tqdm

    from raysearch.crbm import CRBM
    from raysearch.data.preprocessing import check_trainable, preprocess

    out = Path(args.out)
    # settings and paths first, so a bad one fails before any data is read
    _check_paths(args)
    _check_args(args)
    CRBM(
        n_hidden=args.hidden,
        visible=args.visible or "bernoulli",
        penalty=args.penalty,
        lam=args.lam,
        n_updates=args.updates,
        batch_size=args.batch,
        n_gibbs=args.gibbs,
        learning_rate=args.lr,
        seed=args.seed,
        backend=args.backend,
        n_jobs=args.jobs,
    )._check_settings()
    rec = _load(args)
    ds = preprocess(
        rec,
        signal=args.signal,
        voxel_um=args.voxel_um,
        visible=args.visible,
        transform=args.transform,
        threshold=args.threshold,
        test_segments=_test_segments(args.test_segments),
        seed=args.seed,
    )
    check_trainable(ds)
    model = CRBM(
        n_hidden=args.hidden,
        visible=ds.visible,
        penalty=args.penalty,
        lam=args.lam,
        n_updates=args.updates,
        batch_size=args.batch,
        n_gibbs=args.gibbs,
        learning_rate=args.lr,
        seed=args.seed,
        backend=args.backend,
        n_jobs=args.jobs,
    )
    if args.checkpoint:
        _check_checkpoint_owner(args, model, ds)
    every = max(1, min(100, args.updates // 100))
    bar = tqdm(
        total=args.updates,
        unit="upd",
        file=sys.stderr,
        disable=args.quiet,
        desc=f"cRBM N={ds.n_units} M={args.hidden} lam={args.lam:g}",
        dynamic_ncols=True,
    )

    def progress(p):
        bar.update(p["updates"] - bar.n)
        bar.set_postfix(recon=f"{p['health']:.4f}", lr=f"{p['lr']:.1e}", refresh=False)

    try:
        model.fit(
            ds,
            callback=progress,
            callback_every=every,
            checkpoint=(args.checkpoint, 1000) if args.checkpoint else None,
            resume_from=args.resume,
        )
    finally:
        bar.close()
    result = {
        "model": str(out),
        "data": str(args.data),
        "n_units": int(ds.n_units),
        "n_train": int(ds.n_train),
        "n_test": int(ds.n_test),
        "visible": ds.visible,
        "n_hidden": args.hidden,
        "lam": args.lam,
        "penalty": args.penalty,
        "seed": args.seed,
        "updates": model.n_updates_done_,
        "seconds": round(model.fit_seconds_, 3),
        "diverged": bool(model.diverged_),
        "diverged_reason": str(getattr(model, "diverged_reason_", "")),
        "backend": model._backend().name,
    }
    # the fit is saved before the evaluation, so a failing evaluation never loses it
    model.save(out, dataset=ds)
    if not args.no_eval:
        from raysearch.evaluation import evaluate

        if not args.quiet:
            print("evaluating on the held-out segments ...", file=sys.stderr)
        try:
            metrics = evaluate(model, ds, n_chains=args.eval_chains, seed=args.seed)
        except RaysearchError as exc:
            raise type(exc)(f"{exc} (the fitted model is saved in {out})") from None
        result.update(metrics.to_dict())
    print(json_line(result))
    return 0


def _jsonable(x):
    try:
        return x.item()  # numpy scalars
    except AttributeError:
        return str(x)


def _null_nonfinite(x):
    """Replace NaN/inf floats by None, recursively (JSON has no NaN)."""
    if isinstance(x, dict):
        return {k: _null_nonfinite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_null_nonfinite(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            x = x.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def json_line(obj, default=_jsonable, **kw) -> str:
    """``json.dumps`` with NaN/inf written as null (strict JSON)."""
    return json.dumps(_null_nonfinite(obj), default=default, allow_nan=False, **kw)
