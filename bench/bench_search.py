"""Benchmark of the search service: trials per hour, share of wall time training, per-trial overhead.

Two measurements on one local Ray instance (``num_cpus`` = the study's concurrency):

1. ``quickstart``: the shipped quickstart study, as ``raysearch run`` runs it.
2. tiny trials: the same study shrunk to near-zero work per trial (60 neurons, 5 hidden units,
   40 updates, 4 reports), 4 and 16 trials with ``reuse_actors`` and 4 without. The difference
   between the 4- and 16-trial runs gives the marginal overhead per trial; what is left of the
   4-trial run is the fixed cost per study (Tuner start and end, first actors' imports).

Definitions (``wall`` = ``Tuner.fit()`` wall time, data preparation and Ray start excluded and
reported separately; ``C`` = max concurrent trials; sums over trials):

* trials per hour = n_trials / wall * 3600
* training share = sum(training seconds) / (C * wall)   (evaluation share likewise); training
  seconds are the fit's own time, without the evaluations and checkpoints done inside it
* per-trial overhead = (C * wall - sum(training + evaluation seconds)) / n_trials: everything
  else (actor start, data fetch, checkpoint files, reports, experiment snapshots, model file)

Usage::

    python bench/bench_search.py                # both parts, prints Markdown rows and JSON
    python bench/bench_search.py --skip-quickstart
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # benchmark only: a throwaway local instance
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _measure(study, label: str) -> dict:
    from raysearch.search.results import load_results
    from raysearch.search.tuner import (
        _set_tune_env,
        _write_study,
        build_tuner,
        experiment_dir,
        prepare_datasets,
    )

    _set_tune_env()
    t0 = time.perf_counter()
    datasets = prepare_datasets(study)
    prep = time.perf_counter() - t0
    exp = experiment_dir(study)
    _write_study(study, exp)
    tuner = build_tuner(study, datasets, exp)
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    df = load_results(exp)
    n = len(df)
    c = min(study.search.max_concurrent, n)
    fit_s = float(df["train_seconds"].sum())
    eval_s = float(df["eval_seconds"].sum())
    return {
        "label": label,
        "n_trials": n,
        "errors": grid.num_errors,
        "concurrency": c,
        "data_prep_s": round(prep, 2),
        "wall_s": round(wall, 2),
        "trials_per_hour": round(n / wall * 3600, 1),
        "train_share": round(fit_s / (c * wall), 3),
        "eval_share": round(eval_s / (c * wall), 3),
        "overhead_per_trial_s": round((c * wall - fit_s - eval_s) / n, 2),
        "mean_train_s": round(fit_s / n, 2),
        "mean_eval_s": round(eval_s / n, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-quickstart", action="store_true")
    ap.add_argument("--small", type=int, default=4, help="tiny trials in the small run")
    ap.add_argument("--large", type=int, default=16, help="tiny trials in the large run")
    args = ap.parse_args()

    import numpy
    import optuna
    import ray

    from raysearch.search.config import load_study

    base = load_study(None)
    root = tempfile.mkdtemp(prefix="bench-search-")
    t0 = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=base.search.max_concurrent,
        include_dashboard=False,
        log_to_driver=False,
    )
    ray_start = time.perf_counter() - t0
    rows = []
    try:
        if not args.skip_quickstart:
            s = base.model_copy(deep=True)
            s.run.storage_path, s.run.verbose = root, 0
            rows.append(_measure(s, "quickstart"))
        from raysearch.search.config import study_from_dict

        for n, reuse in ((args.small, True), (args.large, True), (args.small, False)):
            d = copy.deepcopy(base.to_dict())
            d["name"] = f"overhead-n{n}-reuse{int(reuse)}"
            d["recordings"] = [
                {"name": "tiny", "synthetic": {"n_neurons": 60, "n_frames": 600, "seed": 0}}
            ]
            d["preprocessing"].update(n_segments=5, n_test_segments=1, test_segments=[2])
            d["model"].update(n_hidden=5, n_updates=40, batch_size=50, n_gibbs=2)
            d["search"].update(num_samples=n, points_to_evaluate=[])
            d["evaluation"] = {
                "report_every": 10,
                "during": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
                "final": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
            }
            d["run"].update(storage_path=root, verbose=0, reuse_actors=reuse)
            rows.append(_measure(study_from_dict(d), f"tiny trials, reuse_actors={reuse}"))
        a, b = rows[-3], rows[-2]
        work = lambda r: r["n_trials"] * (r["mean_train_s"] + r["mean_eval_s"])  # noqa: E731
        c = a["concurrency"]
        marginal = (c * (b["wall_s"] - a["wall_s"]) - (work(b) - work(a))) / (
            b["n_trials"] - a["n_trials"]
        )
        fixed = a["wall_s"] - (a["n_trials"] * marginal + work(a)) / c
    finally:
        ray.shutdown()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "ray": ray.__version__,
        "optuna": optuna.__version__,
        "numpy": numpy.__version__,
        "ray_start_s": round(ray_start, 2),
        "marginal_overhead_per_trial_s": round(marginal, 2),
        "fixed_cost_per_study_s": round(fixed, 2),
    }
    print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(
        "\n| run | trials | C | wall s | trials/h | training share | eval share | "
        "overhead/trial s | mean training s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['label']} | {r['n_trials']} | {r['concurrency']} | {r['wall_s']} | "
            f"{r['trials_per_hour']} | {r['train_share']:.0%} | {r['eval_share']:.0%} | "
            f"{r['overhead_per_trial_s']} | {r['mean_train_s']} |"
        )
    print(
        f"\nmarginal overhead per trial (reuse_actors, from the {args.small}- and "
        f"{args.large}-trial runs): {marginal:.2f} s; fixed cost per study (Tuner.fit start/end, "
        f"first actors): {fixed:.1f} s; ray.init: {ray_start:.1f} s"
    )


if __name__ == "__main__":
    main()
