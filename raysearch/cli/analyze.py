"""``raysearch analyze DIR [--out DIR]``: couplings, similarity, clusters, regions, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raysearch.cli.train import json_line


def register(sub):
    """Add the ``analyze`` subcommand to the argparse sub-parsers ``sub``."""
    p = sub.add_parser(
        "analyze",
        help="analyze a finished study: coupling similarity, PCA, "
        "k-means, region couplings, assemblies; writes report.html + CSV tables",
        description="Analyze the models of an experiment directory and write "
        "report.html (self-contained), figures/*.png and tables/*.csv.",
    )
    p.add_argument("directory", help="experiment directory (<storage>/<study name>)")
    p.add_argument("--out", default=None, help="output directory (default: <directory>/analysis)")
    p.add_argument(
        "--structural",
        default=None,
        help="structural region matrix to compare region couplings with: a CSV "
        "(regions x regions, named rows/columns) or a synthetic recording .h5 (its "
        "planted structural matrix)",
    )
    p.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="number of k-means clusters (default: chosen by silhouette score)",
    )
    p.add_argument(
        "--similarity",
        choices=("auto", "exact", "sketch"),
        default="auto",
        help="model-similarity route (default auto: exact unless too costly)",
    )
    p.add_argument("--sketch-dim", type=int, default=2**15, help="sketch length (sketch route)")
    p.add_argument(
        "--region-models",
        type=int,
        default=10,
        help="number of best models whose region couplings are computed (default 10; "
        "each costs O(N^2 M))",
    )
    p.add_argument(
        "--assembly-threshold",
        type=float,
        default=0.3,
        help="assembly membership: |w| >= this x the unit's largest |w| (default 0.3)",
    )
    p.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fail when a model file cannot be read (garbage, a pickle, truncated); "
        "default. --no-strict analyzes the other models and lists the skipped files "
        "on stderr, in the report and in summary.json",
    )
    p.set_defaults(func=_run)


def _run(args) -> int:
    from raysearch.analysis import analyze
    from raysearch.errors import ConfigError
    from raysearch.report import write_report

    if args.clusters is not None and args.clusters < 1:
        raise ConfigError(f"--clusters must be >= 1, got {args.clusters}")
    if args.region_models < 1:
        raise ConfigError(f"--region-models must be >= 1, got {args.region_models}")
    res = analyze(
        args.directory,
        structural=args.structural,
        n_clusters=args.clusters,
        similarity=args.similarity,
        sketch_dim=args.sketch_dim,
        region_models=args.region_models,
        assembly_threshold=args.assembly_threshold,
        strict=args.strict,
    )
    for line in res.skipped:
        print(f"raysearch analyze: warning: skipped unreadable model file {line}", file=sys.stderr)
    out = Path(args.out) if args.out else Path(args.directory) / "analysis"
    report = write_report(res, out)
    print(json_line(res.summary(), default=str))
    print(f"report: {report}")
    return 0
