"""A self-contained ``report.html`` (figures embedded as base64 PNG) plus the tables as CSV.

Layout of the output directory::

    report.html          one file, no external references
    figures/<name>.png   the same figures as files
    tables/<name>.csv    every table of Analysis.tables()
    summary.json         headline numbers and notes

Each file is written under a temporary name and renamed, so an interrupted run leaves no
half-written report.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path

CAPTIONS = {
    "identity_best": "Test data against the model, per statistic, for the best model.",
    "identity_bad": "The same for a bad model (or the worst one when none is flagged bad).",
    "nrmse_vs_lambda": "Each nRMSE against lambda; crosses are bad models.",
    "bad_share_vs_lambda": "Share of bad models per log-lambda bin (number of models on top).",
    "region_couplings": "Region-level couplings (mean |J_ij| over neuron pairs, log10).",
    "similarity": "Pearson correlation between the models' off-diagonal couplings, by cluster.",
    "pca": "Kernel PCA of the similarity matrix, coloured by lambda and by k-means cluster.",
    "assemblies": "Assemblies (members of the largest hidden units) on the unit coordinates.",
}


def _write_atomic(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _table_html(df, max_rows=50):
    return df.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}",
                                     border=0, classes="tbl")


def write_report(analysis, out_dir) -> Path:
    """Write report.html, figures/, tables/ and summary.json for an analysis.

    Parameters
    ----------
    analysis : raysearch.analysis.Analysis
    out_dir : path

    Returns
    -------
    Path of report.html
    """
    from raysearch import plots

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    tables = analysis.tables()
    for name, df in tables.items():
        index = name.startswith(("similarity_", "region_couplings_", "region_consistency",
                                 "recording_consistency"))
        _write_atomic(out / "tables" / f"{name}.csv", df.to_csv(index=index).encode())
    figs = plots.save_figures(analysis, out / "figures")
    summary = {"directory": analysis.directory, **analysis.summary(), "notes": analysis.notes,
               "figures": sorted(figs), "tables": sorted(tables)}
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())

    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>raysearch analysis: {esc(analysis.directory)}</title>",
             "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "img{max-width:100%}.tbl{border-collapse:collapse;font-size:12px}"
             ".tbl td,.tbl th{padding:2px 6px;border-bottom:1px solid #ddd}</style>",
             "</head><body>",
             f"<h1>raysearch analysis</h1><p>Experiment directory: <code>"
             f"{esc(analysis.directory)}</code></p>", "<h2>Summary</h2><ul>"]
    for k, v in analysis.summary().items():
        parts.append(f"<li>{esc(str(k))}: {esc(f'{v:.4g}' if isinstance(v, float) else str(v))}"
                     "</li>")
    parts.append("</ul>")
    if analysis.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in analysis.notes)
                     + "</ul>")
    parts.append("<h2>Clusters</h2>" + _table_html(analysis.clusters))
    if analysis.structural is not None:
        parts.append("<h2>Structural comparison (Spearman)</h2>"
                     + _table_html(analysis.structural))
    parts.append("<h2>Figures</h2>")
    for name, path in figs.items():
        b64 = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<figure id='fig-{esc(name)}'><img alt='{esc(name)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption><b>{esc(name)}</b>: "
                     f"{esc(CAPTIONS.get(name, ''))}</figcaption></figure>")
    parts.append("<h2>Tables</h2><ul>" + "".join(
        f"<li><code>tables/{esc(n)}.csv</code> ({len(t)} rows)</li>" for n, t in tables.items())
        + "</ul>")
    if analysis.assemblies is not None:
        parts.append(f"<h3>Assemblies of {esc(str(analysis.assembly_trial))}</h3>"
                     + _table_html(analysis.assemblies.table.sort_values("size",
                                                                         ascending=False)))
    parts.append("</body></html>")
    report = out / "report.html"
    _write_atomic(report, "\n".join(parts).encode())
    return report
