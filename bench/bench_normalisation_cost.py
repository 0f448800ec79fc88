"""Cost of the normalisation term and the bounds per PCD update, in the same process.

    python bench/bench_normalisation_cost.py                    # 5000x100 and 20000x200
    python bench/bench_normalisation_cost.py --sizes 5000x100 --rounds 6

Alternates, ``--rounds`` times, ``bench_trainer.bench_one`` (the estimator's inner loop, two chain
threads) with today's rule and with the rule before the normalisation term and the bounds (the
same code with ``gradients`` called at lam = 0, which is what it computed before for the
weights_step path, and ``bound_hidden`` the identity). Reports each side's best block and the
ratio new/old per round. One JSON line per size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_trainer import bench_one  # noqa: E402

from raysearch.backend import get_backend  # noqa: E402
from raysearch.crbm import training  # noqa: E402

_NEW = (training.gradients, training.bound_hidden)


def _old_rule():
    grad = _NEW[0]

    def gradients(params, V_pos, V_neg, moments_data, cfg, *a, **k):
        return grad(params, V_pos, V_neg, moments_data, dataclasses.replace(cfg, lam=0.0), *a, **k)

    training.gradients = gradients
    training.bound_hidden = lambda params, bk: dict(params)


def _new_rule():
    training.gradients, training.bound_hidden = _NEW


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="*", default=["5000x100", "20000x200"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    bk = get_backend("numpy")
    for size in args.sizes:
        N, M = (int(x) for x in size.split("x"))
        res = {"old": [], "new": []}
        for _ in range(args.rounds):
            for side in ("old", "new"):
                (_old_rule if side == "old" else _new_rule)()
                res[side].append(bench_one(bk, N, M, repeats=3, jobs=args.jobs)[0])
        _new_rule()
        ratios = [n / o for n, o in zip(res["new"], res["old"])]
        print(
            json.dumps(
                {
                    "bench": "normalisation_cost",
                    "N": N,
                    "M": M,
                    "old_best": min(res["old"]),
                    "new_best": min(res["new"]),
                    "ratio_best": min(res["new"]) / min(res["old"]),
                    "ratios_per_round": [round(r, 3) for r in ratios],
                    "ratio_median": float(np.median(ratios)),
                    "machine": platform.node(),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
