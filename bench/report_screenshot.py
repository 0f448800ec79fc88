"""Render an analysis report in headless Chromium and save a full-page screenshot.

    python bench/report_screenshot.py                      # a synthetic study (no Ray needed)
    python bench/report_screenshot.py EXPERIMENT_DIR       # the report of a real study
    python bench/report_screenshot.py --report OUT/report.html   # an existing report

Options: ``--out DIR`` (default ./report-screenshot), ``--width`` (1400), ``--height`` (6000),
``--chromium`` (path; default ``chromium`` or ``chromium-browser`` on PATH; Debian:
``apt-get install chromium``). Writes ``DIR/report/`` (unless --report) and ``DIR/report.png``,
and prints the PNG's path. Look at it at 100% zoom: every label should be readable.

The synthetic study is the analyzer tests' fake experiment (nine models in three families, one
flagged bad) plus one diverged model whose nRMSE values are all infinite, so the report shows how
non-finite points are drawn.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, else ``chromium`` / ``chromium-browser`` on PATH."""
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).exists() else None)
    return shutil.which("chromium") or shutil.which("chromium-browser")


def synthetic_experiment(root: Path) -> Path:
    """The analyzer tests' fake experiment plus one diverged model (inf nRMSE); returns its dir."""
    import json

    import numpy as np

    sys.path.insert(0, str(ROOT / "tests" / "analysis"))
    from analysis_helpers import family_specs, make_experiment

    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    rec, _ = make_synthetic_recording(n_neurons=200, n_frames=1000, seed=0)
    ds = preprocess(rec)
    specs = family_specs(np.random.default_rng(0), ds.n_units, per_family=3)
    exp = make_experiment(root / "study", specs, ds)
    # the study as run, as raysearch run writes it (the report's header reads it)
    import yaml

    study = {
        "name": "synthetic-demo",
        "description": "Fake fits of three model families.",
        "recordings": [
            {"name": "fish", "synthetic": {"n_neurons": 200, "n_frames": 1000, "seed": 0}}
        ],
        "preprocessing": {"signal": "spikes"},
        "model": {"n_hidden": 5},
        "search": {
            "mode": "optuna",
            "penalty": "l2l1",
            "lam": {"low": 1e-3, "high": 3.0},
            "objective": "max_nrmse",
        },
    }
    (exp / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    # the bad model's evaluation failed on two statistics (a finite model, non-finite nRMSE)
    for res in exp.glob("*_00003*/result.json"):
        rows = [json.loads(ln) for ln in res.read_text().splitlines() if ln.strip()]
        for r in rows:
            r.update(
                nrmse_vv=float("inf"),
                nrmse_hh=float("nan"),
                mean_nrmse=float("inf"),
                max_nrmse=float("inf"),
            )
        res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import h5py

    for model in exp.glob("models/*_00003*.h5"):
        with h5py.File(model, "a") as f:
            ev = f.require_group("evaluation")
            for k, v in dict(
                nrmse_vv=np.inf, nrmse_hh=np.nan, mean_nrmse=np.inf, max_nrmse=np.inf
            ).items():
                ev.attrs[k] = v
    # one more trial that diverged: no model file, every figure infinite, flagged bad
    tdir = exp / "crbm_trial_diverged_00099"
    tdir.mkdir()
    row = {
        "trial_id": "diverged_00099",
        "training_iteration": 1,
        "lam": 3.0,
        "seed": 0,
        "recording": "fish",
        "penalty": "l2l1",
        "n_hidden": 5,
        "bad": True,
        "mean_nrmse": float("inf"),
        "max_nrmse": float("inf"),
        "updates": 40,
        "final": True,
        "model_path": "",
        **{f"nrmse_{s}": float("inf") for s in ("v", "h", "vh", "vv", "hh")},
    }
    (tdir / "result.json").write_text(json.dumps(row) + "\n")
    (tdir / "params.json").write_text(json.dumps({"lam": 3.0, "seed": 0, "recording": "fish"}))
    return exp


def screenshot(report: Path, png: Path, chromium: str, width=1400, height=6000) -> Path:
    """Save a screenshot of ``report`` (an HTML file) as ``png`` with headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="raysearch-chromium-") as profile:
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            report.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if not png.exists():
        raise RuntimeError(
            f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
        )
    return png


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("experiment", nargs="?", default=None)
    p.add_argument("--report", default=None, help="an existing report.html to screenshot")
    p.add_argument("--out", default="report-screenshot")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=6000)
    p.add_argument("--chromium", default=None)
    args = p.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report:
        report = Path(args.report)
    else:
        from raysearch.analysis import analyze
        from raysearch.report import write_report

        exp = Path(args.experiment) if args.experiment else synthetic_experiment(out / "data")
        report = write_report(analyze(exp, region_models=2), out / "report")
    png = screenshot(report, out / "report.png", chromium, args.width, args.height)
    print(png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
