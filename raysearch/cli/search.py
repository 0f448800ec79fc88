"""``raysearch run``, ``raysearch resume`` and ``raysearch results``: thin calls into raysearch.search."""

from __future__ import annotations

import os

import numpy as np

from raysearch.errors import ConfigError

_TABLE_COLUMNS = ["trial_id", "lam", "seed", "recording", "n_hidden", "status", "mean_nrmse",
                  "max_nrmse", "bad", "sparsity", "updates", "seconds"]


def register(sub):
    """Add ``run``, ``resume`` and ``results`` to the argparse sub-parsers ``sub``."""
    p = sub.add_parser("run", help="run a lambda search (default: the quickstart study)",
                       description="Run a study with Ray Tune. Without --address a local Ray "
                       "instance is started on 127.0.0.1 (dashboard included); with --address "
                       "(or RAY_ADDRESS, as set by `ray job submit`) the study joins that cluster.")
    p.add_argument("study", nargs="?", default=None,
                   help="study YAML file (default: the packaged quickstart study)")
    p.add_argument("--address", default=None,
                   help="Ray cluster to join: auto, HOST:PORT or ray://HOST:10001")
    p.add_argument("--storage", default=None,
                   help="storage path or URI for the results (default: the study's "
                        "run.storage_path, ./ray_results); a cluster needs shared storage")
    p.add_argument("--name", default=None, help="experiment name (default: the study's name)")
    p.set_defaults(func=_run)

    p = sub.add_parser("resume", help="continue an interrupted study",
                       description="Continue a study from its experiment directory: finished "
                       "trials are kept, interrupted ones continue from their last checkpoint.")
    p.add_argument("directory", help="experiment directory (<storage>/<name>)")
    p.add_argument("--address", default=None, help="Ray cluster to join (as for run)")
    p.set_defaults(func=_resume)

    p = sub.add_parser("results", help="show or export the trials of a study",
                       description="One row per trial, read from the experiment directory "
                       "alone (no Ray needed).")
    p.add_argument("directory", help="experiment directory (<storage>/<name>)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--csv", default=None, metavar="FILE", help="write the table as CSV")
    g.add_argument("--parquet", default=None, metavar="FILE", help="write the table as Parquet")
    p.add_argument("--history", action="store_true", help="one row per report instead of per trial")
    p.set_defaults(func=_results)


def _print_connect(url):
    if url:
        print(f"Ray dashboard: {url}", flush=True)
    else:
        print("Using the Ray instance already initialised in this process.", flush=True)


def _run(args) -> int:
    from raysearch.search import run_study

    run = run_study(args.study, address=args.address, storage=args.storage, name=args.name,
                    on_connect=_print_connect)
    print(summary(run.results))
    print(f"\nExperiment directory: {run.experiment_dir}")
    print(f"Results: raysearch results {run.experiment_dir}")
    return 0 if run.num_errors == 0 else 1


def _resume(args) -> int:
    from raysearch.search import resume_study

    run = resume_study(args.directory, address=args.address, on_connect=_print_connect)
    print(summary(run.results))
    print(f"\nExperiment directory: {run.experiment_dir}")
    return 0 if run.num_errors == 0 else 1


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
        print(summary(df))
    return 0


def summary(df) -> str:
    """The trial table, the best λ and the share of bad models per λ range, as text."""
    import pandas as pd

    lines = []
    if df.empty:
        return "No trials."
    cols = [c for c in _TABLE_COLUMNS if c in df]
    view = df.sort_values("lam")[cols]
    with pd.option_context("display.max_rows", 500, "display.width", 160,
                           "display.float_format", "{:.4g}".format):
        lines.append(view.to_string(index=False))
    study = df.attrs.get("study") or {}
    objective = (study.get("search") or {}).get("objective", "mean_nrmse")
    ok = df[df.get("finished", True) & ~df["bad"].fillna(True).astype(bool)]
    ok = ok[np.isfinite(ok[objective].astype(float))]
    lines.append("")
    if ok.empty:
        lines.append(f"Best lambda: none (no finished trial that is not bad; {len(df)} trials)")
    else:
        best = ok.loc[ok[objective].astype(float).idxmin()]
        lines.append(f"Best lambda: {best['lam']:.4g} ({objective} {best[objective]:.4f}, "
                     f"trial {best['trial_id']}, seed {best['seed']}, recording "
                     f"{best['recording']})")
    if "pareto" in df:
        front = df[df["pareto"]].sort_values("lam")
        lines.append(f"Pareto front ({objective} vs weight_density): "
                     + ", ".join(f"lam={r.lam:.3g}" for r in front.itertuples()))
    from raysearch.selection import bad_share_by_lambda, recommend

    done = df[df["finished"]] if "finished" in df else df
    if len(done):
        rec = recommend(done, objective=objective)
        if rec.message:
            lines.append(f"Recommendation: {rec.message}")
        shares = bad_share_by_lambda(done)
        lines.append("Bad models per lambda range (finished trials, 95% Wilson interval):")
        for r in shares.itertuples():
            if r.n_fits:
                lines.append(f"  [{r.lam_low:.3g}, {r.lam_high:.3g}]: {r.n_bad}/{r.n_fits} bad "
                             f"({100 * r.share_bad:.0f}%, CI {100 * r.ci_low:.0f}-"
                             f"{100 * r.ci_high:.0f}%)")
    n_unfinished = int((~df["finished"]).sum()) if "finished" in df else 0
    if n_unfinished:
        lines.append(f"{n_unfinished} trial(s) did not finish (status column).")
    return "\n".join(lines)

