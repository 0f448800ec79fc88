"""``raysearch run``, ``raysearch resume`` and ``raysearch results``: thin calls into raysearch.search."""

from __future__ import annotations

import argparse
import os
import sys

from raysearch import verdicts
from raysearch.errors import ConfigError
from raysearch.verdicts import DEFAULT_OBJECTIVE

_TABLE_COLUMNS = [
    "trial_id",
    "lam",
    "seed",
    "recording",
    "n_hidden",
    "status",
    "mean_nrmse",
    "max_nrmse",
    "bad",
    "bad_reason",
    "sparsity",
    "updates",
    "seconds",
]


def register(sub):
    """Add ``run``, ``resume`` and ``results`` to the argparse sub-parsers ``sub``."""
    p = sub.add_parser(
        "run",
        help="run a lambda search (default: the quickstart study)",
        description="Run a study with Ray Tune. Without --address a local Ray "
        "instance is started on 127.0.0.1 (dashboard included); with --address "
        "(or RAY_ADDRESS, as set by `ray job submit`) the study joins that cluster. "
        "Exit status: 0 all trials ended, 1 some trials errored, 3 the study did "
        "not finish (e.g. Ctrl+C; continue it with `raysearch resume DIR`).",
    )
    p.add_argument(
        "study",
        nargs="?",
        default=None,
        help="study YAML file (default: the packaged quickstart study)",
    )
    p.add_argument(
        "--address", default=None, help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001"
    )
    p.add_argument(
        "--storage",
        default=None,
        help="storage path or URI for the results (default: the study's "
        "run.storage_path, ./ray_results); a cluster needs shared storage",
    )
    p.add_argument("--name", default=None, help="experiment name (default: the study's name)")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "resume",
        help="continue an interrupted study",
        description="Continue a study from its experiment directory: finished "
        "trials are kept, interrupted ones continue from their last checkpoint. "
        "Exit status as for run.",
    )
    p.add_argument("directory", help="experiment directory (<storage>/<name>)")
    p.add_argument("--address", default=None, help="Ray cluster to join (as for run)")
    p.set_defaults(func=_resume)

    p = sub.add_parser(
        "results",
        help="show or export the trials of a study",
        description="One row per trial, read from the experiment directory alone (no Ray needed).",
    )
    p.add_argument("directory", help="experiment directory (<storage>/<name>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV")
    g.add_argument("--parquet", default=None, metavar="FILE", help="write the table as Parquet")
    p.add_argument("--history", action="store_true", help="one row per report instead of per trial")
    p.add_argument(
        "--objective",
        choices=verdicts.OBJECTIVES,
        default=None,
        help="objective of the model selection (default: the study's search.objective)",
    )
    p.add_argument(
        "--rule",
        choices=("sparsest", "best"),
        default="sparsest",
        help="sparsest: the largest lambda whose objective is within the tolerance of "
        "the best, among fits that are not bad (default); best: lowest objective",
    )
    p.add_argument(
        "--tolerance",
        type=_tolerance,
        default=None,
        help="absolute tolerance on the objective for --rule sparsest (default: the "
        "margin within which a lambda cannot be told apart from the best at 95%% "
        "confidence, raysearch.selection.default_tolerance); 'seed-spread': "
        "the seed-to-seed spread of the objective near the best lambda",
    )
    p.set_defaults(func=_results)


def _print_connect(url):
    if url:
        print(f"Ray dashboard: {url}", flush=True)
    else:
        print("Using the Ray instance already initialised in this process.", flush=True)


def _print_next_steps(run) -> None:
    """Where the results are and the commands to run next (raysearch.search.monitoring)."""
    from raysearch.search.monitoring import next_steps

    study = run.results.attrs.get("study") or {}
    search = study.get("search") or {}
    url = None
    if search.get("mode", "optuna") != "grid":
        url = search.get("optuna_storage") or (
            f"sqlite:///{os.path.join(run.experiment_dir, 'optuna.db')}"
            if "://" not in run.experiment_dir
            else None
        )
    print()
    print("\n".join(next_steps(run.experiment_dir, url)))


#: exit status of ``run``/``resume`` when the study did not finish (interrupted, e.g. Ctrl+C)
EXIT_UNFINISHED = 3


def _resume_hint(exp_dir) -> None:
    print(
        f"raysearch: the study did not finish; continue it with:\n  raysearch resume {exp_dir}",
        file=sys.stderr,
        flush=True,
    )


def _exit_status(run) -> int:
    """0: every trial ended without error; 1: some trials errored; 3: the study did not finish
    (trials left running or never started, e.g. after Ctrl+C), with the resume command printed."""
    if not run.complete:
        print(f"\n{run.num_unfinished} trial(s) of the study did not finish.")
        _resume_hint(run.experiment_dir)
        return EXIT_UNFINISHED
    return 0 if run.num_errors == 0 else 1


def _run(args) -> int:
    from raysearch.search import load_study, run_study
    from raysearch.search.tuner import experiment_dir

    study = load_study(args.study)
    exp_dir = experiment_dir(study, args.storage, args.name)
    try:
        run = run_study(
            study,
            address=args.address,
            storage=args.storage,
            name=args.name,
            on_connect=_print_connect,
        )
    except KeyboardInterrupt:
        if os.path.isdir(exp_dir):
            _resume_hint(exp_dir)
        raise
    print(summary(run.results))
    _print_next_steps(run)
    return _exit_status(run)


def _resume(args) -> int:
    from raysearch.search import resume_study

    try:
        run = resume_study(args.directory, address=args.address, on_connect=_print_connect)
    except KeyboardInterrupt:
        _resume_hint(args.directory)
        raise
    print(summary(run.results))
    _print_next_steps(run)
    return _exit_status(run)


def _write_table(df, path: str, fmt: str) -> None:
    tmp = f"{path}.part"
    try:
        if fmt == "csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except OSError as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def _results(args) -> int:
    from raysearch.search import load_results

    df = load_results(args.directory, history=args.history)
    if args.csv:
        _write_table(df, args.csv, "csv")
        print(f"wrote {len(df)} rows to {args.csv}")
    elif args.parquet:
        _write_table(df, args.parquet, "parquet")
        print(f"wrote {len(df)} rows to {args.parquet}")
    elif args.history:
        print(df.to_string(index=False))
    else:
        print(summary(df, objective=args.objective, rule=args.rule, tolerance=args.tolerance))
    return 0


def _tolerance(text: str):
    """--tolerance: a number >= 0 or 'seed-spread'."""
    if text == "seed-spread":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a number nor 'seed-spread'"
        ) from None


def summary(df, objective=None, rule="sparsest", tolerance=None) -> str:
    """The trial table, the best λ, the recommended model and the bad share per λ bin, as text.

    ``objective`` (default: the study's), ``rule`` and ``tolerance`` are those of
    :func:`raysearch.selection.recommend`.
    """
    import pandas as pd

    lines = []
    if df.empty:
        return "No trials."
    cols = [c for c in _TABLE_COLUMNS if c in df]
    view = df.sort_values("lam")[cols]
    with pd.option_context(
        "display.max_rows", 500, "display.width", 160, "display.float_format", "{:.4g}".format
    ):
        lines.append(view.to_string(index=False))
    study = df.attrs.get("study") or {}
    objective = objective or (study.get("search") or {}).get("objective", DEFAULT_OBJECTIVE)
    done = df[verdicts.finished_mask(df)]
    best_at = verdicts.best_index(done, objective) if len(done) else None
    lines.append("")
    if best_at is None:
        lines.append(f"Best lambda: none (no finished trial that is not bad; {len(df)} trials)")
    else:
        best = done.loc[best_at]
        lines.append(
            f"Best lambda: {best['lam']:.4g} ({objective} {best[objective]:.4f}, "
            f"trial {best['trial_id']}, seed {best['seed']}, recording "
            f"{best['recording']})"
        )
    if "pareto" in df:
        front = df[df["pareto"]].sort_values("lam")
        lines.append(
            f"Pareto front ({objective} vs weight_density): "
            + ", ".join(f"lam={r.lam:.3g}" for r in front.itertuples())
        )
    if len(done):
        lines.extend(selection_lines(done, objective=objective, rule=rule, tolerance=tolerance))
    n_unfinished = int((~df["finished"]).sum()) if "finished" in df else 0
    if n_unfinished:
        lines.append(f"{n_unfinished} trial(s) did not finish (status column).")
    return "\n".join(lines)


def _fit_line(role: str, r, objective: str) -> str:
    other = "max_nrmse" if objective != "max_nrmse" else "mean_nrmse"
    parts = [f"  {role + ':':<16}lambda {float(r['lam']):.4g}", f"trial {r['trial_id']}"]
    if "seed" in r:
        parts.append(f"seed {r['seed']}")
    lam_mean = r.get("lam_objective")
    parts.append(
        f"{objective} {float(r[objective]):.4f}"
        + (
            f" (lambda mean {float(lam_mean):.4f})"
            if lam_mean is not None and lam_mean == lam_mean
            else ""
        )
    )
    if other in r:
        parts.append(f"{other} {float(r[other]):.4f}")
    if "weight_density" in r:
        parts.append(f"weight_density {float(r['weight_density']):.4g}")
    return ", ".join(parts)


def selection_lines(
    done, objective=DEFAULT_OBJECTIVE, rule="sparsest", tolerance=None
) -> list[str]:
    """The model-selection block of ``raysearch results``: recommendation and bad share per bin.

    Parameters
    ----------
    done : DataFrame
        Finished trials (rows of ``load_results``).
    objective, rule, tolerance : see :func:`raysearch.selection.recommend`.
    """
    import pandas as pd

    from raysearch.selection import recommend
    from raysearch.verdicts import bad_share_by_lambda

    rec = recommend(done, objective=objective, rule=rule, tolerance=tolerance)
    lines = ["", f"Model selection (objective {objective}, rule {rule}):"]
    if rec.row is None:
        lines.append(f"  no recommendation: {rec.message}")
    else:
        lines.append(_fit_line("recommended", rec.row, objective))
        if rule == "sparsest":
            lines.append(
                f"  {'tolerance:':<16}{rec.tolerance:.4g} ({rec.tolerance_source}); "
                f"{len(rec.candidates)} good fit(s) within it"
            )
        lines.append(_fit_line("best objective", rec.best_row, objective))
        if rec.runner_up is not None:
            lines.append(_fit_line("runner-up", rec.runner_up, objective))
        else:
            lines.append(f"  {'runner-up:':<16}none")
        lines.append(f"  {rec.message}")
    shares = bad_share_by_lambda(done)
    lines.append("")
    why = {
        r: int(shares[f"n_{r}"].sum())
        for r in verdicts.BAD_REASONS + ("unknown",)
        if f"n_{r}" in shares
    }
    if any(why.values()):
        lines.append(
            "Why fits are bad: "
            + ", ".join(f"{r} {n}" for r, n in why.items() if n)
            + " (raysearch.verdicts)"
        )
    lines.append("Bad models per lambda range (log bins; finished trials; 95% Wilson interval):")
    view = pd.DataFrame(
        {
            "lam_low": shares["lam_low"].map("{:.3g}".format),
            "lam_high": shares["lam_high"].map("{:.3g}".format),
            "n": shares["n_fits"],
            "bad": shares["n_bad"],
            "empty": shares["n_empty"],
            "share": shares["share_bad"].map(lambda x: "-" if x != x else f"{100 * x:.0f}%"),
            "ci": [
                ("-" if lo != lo else f"{100 * lo:.0f}-{100 * hi:.0f}%")
                for lo, hi in zip(shares["ci_low"], shares["ci_high"])
            ],
        }
    )
    lines.extend("  " + ln for ln in view.to_string(index=False).splitlines())
    return lines
