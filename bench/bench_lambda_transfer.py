"""Does a lambda mean the same in raysearch and in the reference? Lambda curves side by side.

    git clone https://github.com/jertubiana/PGM /tmp/PGM
    python bench/bench_lambda_transfer.py --pgm /tmp/PGM                   # l1 and l2l1
    python bench/bench_lambda_transfer.py --pgm /tmp/PGM --penalties l1 --updates 2000

On one synthetic fish (``raysearch.data.synthetic``, spikes, 70% of the frames for training), for
each penalty and each lambda of a half-decade grid, one model is trained by the reference (PGM's
``RBM.fit``, imported from the checkout you give, unchanged, in a subprocess; ``l1=lam`` for
``l1``, ``l1b=lam`` for ``l2l1``, whose gradient is the same lam sign(w) sum_j |w_j|) and one
by raysearch (``CRBM``), with the same settings: M hidden units, batch 100 = 100 chains,
15 Gibbs steps, the same number of updates, learning rate 5e-3 constant for half the updates then
geometric decay to 1%, RMSprop beta2 0.999, epsilon 1e-6 (the reference's
``extra_params=[0, 0.999, 1e-6]``), batch norm on in the reference. For each model: the assembly
recovery (``raysearch.analysis.recovery.assembly_recovery``, mean best |cosine| of each planted assembly)
and the weight density (share of |w| > 0.01 after scaling each unit to Var(h) = 1 on the training
frames, which both sides target). Reported per penalty: the lambda where recovery peaks and the
first lambda where the density falls below ``--vanish`` (1%), for each side, and whether they
agree within one grid step. One JSON line per (penalty, lambda, side), then one summary line per
penalty.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reference import _pgm_commit, _pgm_source  # noqa: E402

_REFERENCE = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    src, data_path, M, updates, penalty, lam, seed = sys.argv[1:8]
    sys.path.insert(0, src)
    import numpy as np, rbm
    X = np.load(data_path).astype(np.int16)
    M, updates, lam, seed = int(M), int(updates), float(lam), int(seed)
    np.random.seed(seed)
    B = 100
    epochs = max(1, updates // (X.shape[0] // B))
    m = rbm.RBM(visible="Bernoulli", hidden="dReLU", n_v=X.shape[1], n_h=M, random_state=seed)
    kw = {"l1": lam} if penalty == "l1" else {"l1b": lam}
    m.fit(X, batch_size=B, N_MC=15, n_iter=epochs, learning_rate=5e-3,
          extra_params=[0, 0.999, 1e-6], lr_decay=True, decay_after=0.5, verbose=0, **kw)
    np.save(data_path + ".W.npy", np.asarray(m.weights, dtype=np.float32))
    g = m.hlayer
    np.save(data_path + ".h.npy", np.array([g.gamma_plus, g.gamma_minus, g.theta_plus,
                                              g.theta_minus], dtype=np.float32))
    print(json.dumps({"epochs": epochs, "updates": epochs * (X.shape[0] // B)}))
""")


def half_decades(lo, hi):
    """lam = 10^(k/2) for lo <= lam <= hi."""
    ks = range(int(np.floor(2 * np.log10(lo) + 1e-9)), int(np.ceil(2 * np.log10(hi) - 1e-9)) + 1)
    return [float(10 ** (k / 2)) for k in ks]


def normalised_weights(W, hidden, X):
    """Each unit moved along its scale-gauge orbit to Var(h) = 1 on X (float64 numpy)."""
    from raysearch.backend import get_backend
    from raysearch.crbm import units

    bk = get_backend("numpy")
    W = np.asarray(W, np.float64)
    gp, gm, tp, tm = (np.asarray(h, np.float64) for h in hidden)
    m, v = units.drelu_mean_var(X @ W.T, gp, gm, tp, tm, bk)
    return W * np.sqrt(m.var(axis=0) + v.mean(axis=0))[:, None]


def summarise(rows, vanish):
    lams = sorted({r["lam"] for r in rows})
    peak = max(rows, key=lambda r: r["recovery"])["lam"]
    gone = [r["lam"] for r in rows if r["density"] < vanish]
    return peak, (min(gone) if gone else None), lams


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pgm", type=Path, required=True, help="a checkout of jertubiana/PGM")
    ap.add_argument("--neurons", type=int, default=600)
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=20)
    ap.add_argument("--updates", type=int, default=3000)
    ap.add_argument("--penalties", nargs="*", default=["l1", "l2l1"])
    ap.add_argument("--lam-min", type=float, default=1e-4)
    ap.add_argument("--lam-max", type=float, default=1.0)
    ap.add_argument("--vanish", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    src = _pgm_source(args.pgm.expanduser().resolve())

    import raysearch
    from raysearch.analysis.recovery import assembly_recovery
    from raysearch.data.synthetic import make_synthetic_recording

    rec, truth = make_synthetic_recording(
        args.neurons, args.frames, seed=args.seed, signals=("spikes",)
    )
    X = rec.spikes[: int(0.7 * args.frames)].astype(np.float32)
    stamp = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "pgm_commit": _pgm_commit(args.pgm),
        "raysearch": raysearch.__version__,
        "numpy": np.__version__,
    }
    grid = half_decades(args.lam_min, args.lam_max)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = str(Path(tmp) / "X.npy")
        np.save(data_path, X)
        for penalty in args.penalties:
            rows = {"reference": [], "raysearch": []}
            for lam in grid:
                out = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        _REFERENCE,
                        str(src),
                        data_path,
                        str(args.hidden),
                        str(args.updates),
                        penalty,
                        repr(lam),
                        str(args.seed),
                    ],
                    capture_output=True,
                    text=True,
                )
                if out.returncode != 0:
                    sys.exit(f"the reference failed ({penalty}, {lam}):\n{out.stderr[-3000:]}")
                W_ref = np.load(data_path + ".W.npy")
                h_ref = np.load(data_path + ".h.npy")
                m = raysearch.CRBM(
                    n_hidden=args.hidden,
                    penalty=penalty,
                    lam=lam,
                    n_updates=args.updates,
                    batch_size=100,
                    n_gibbs=15,
                    learning_rate=5e-3,
                    seed=args.seed,
                )
                m.fit(X)
                sides = {
                    "reference": (W_ref, h_ref),
                    "raysearch": (
                        m.weights_,
                        (m.gamma_plus_, m.gamma_minus_, m.theta_plus_, m.theta_minus_),
                    ),
                }
                for side, (W, hid) in sides.items():
                    Wn = normalised_weights(W, hid, X)
                    row = {
                        "bench": "lambda_transfer",
                        "penalty": penalty,
                        "lam": lam,
                        "side": side,
                        "recovery": round(assembly_recovery(W, truth).mean, 4),
                        "density": round(float((np.abs(Wn) > 0.01).mean()), 4),
                        "l1_norm": round(float(np.abs(Wn).sum(axis=1).mean()), 4),
                    }
                    rows[side].append(row)
                    print(json.dumps(row), flush=True)
            (pr, vr, lams), (pa, va, _) = (
                summarise(rows["reference"], args.vanish),
                summarise(rows["raysearch"], args.vanish),
            )

            def steps(a, b):
                if a is None or b is None:
                    return None if a is not b else 0
                return abs(lams.index(a) - lams.index(b))  # noqa: B023 (called at once)

            print(
                json.dumps(
                    {
                        "bench": "lambda_transfer_summary",
                        "penalty": penalty,
                        "N": args.neurons,
                        "T_train": X.shape[0],
                        "M": args.hidden,
                        "updates": args.updates,
                        "peak_reference": pr,
                        "peak_raysearch": pa,
                        "peak_steps_apart": steps(pr, pa),
                        "vanish_reference": vr,
                        "vanish_raysearch": va,
                        "vanish_steps_apart": steps(vr, va),
                        **stamp,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
