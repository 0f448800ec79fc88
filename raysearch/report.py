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
    "selection_radar": "The five nRMSE values of the recommended model, the best-objective model "
                       "and a bad model (values below 0 drawn at 0).",
    "weight_histograms": "Distribution of the weights of all models, per lambda group.",
    "coupling_histograms": "Distribution of the couplings J_ij on a fixed seeded sample of "
                           "neuron pairs (from the low-rank form), per lambda group.",
}
SELECTION_FIGURES = ("selection_radar", "weight_histograms", "coupling_histograms")


def _selection(analysis):
    """SelectionData of the analysis' finished models, or (None, reason)."""
    from raysearch.errors import RaysearchError
    from raysearch.selection import selection_data

    try:
        # every trial of the study (diverged fits count as bad), not only the analysed models
        from raysearch.search import load_results

        results = load_results(analysis.directory)
    except (RaysearchError, OSError):
        results = analysis.results
    try:
        return selection_data(results), None
    except RaysearchError as exc:
        return None, f"model selection skipped: {exc}"


def _write_atomic(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _table_html(df, max_rows=50):
    return df.head(max_rows).to_html(index=False, float_format=lambda x: f"{x:.4g}",
                                     border=0, classes="tbl")


def _figure_html(name, path) -> str:
    esc = html.escape
    b64 = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure id='fig-{esc(name)}'><img alt='{esc(name)}' "
            f"src='data:image/png;base64,{b64}'><figcaption><b>{esc(name)}</b>: "
            f"{esc(CAPTIONS.get(name, ''))}</figcaption></figure>")


def _selection_html(selection, figs) -> str:
    """The "Model selection" section: recommendation, bad share per bin, radar, histograms."""
    esc = html.escape
    rec = selection.recommendation
    a = rec.attrs
    cols = [c for c in ("role", "trial_id", "lam", "seed", "mean_nrmse", "max_nrmse",
                        "weight_density", "bad") if c in rec.columns]
    parts = ["<h2 id='model-selection'>Model selection</h2>",
             f"<p>Rule: <b>{esc(str(a.get('rule')))}</b> on <b>{esc(str(a.get('objective')))}"
             f"</b>; tolerance {float(a.get('tolerance', 0.0)):.4g} "
             f"({esc(str(a.get('tolerance_source')))}). {esc(str(a.get('message', '')))}</p>",
             _table_html(rec[cols]) if len(rec) else "<p>No usable fit.</p>",
             "<h3>Bad models per lambda bin (95% Wilson interval)</h3>",
             _table_html(selection.bins[["lam_low", "lam_high", "n_fits", "n_bad", "share_bad",
                                         "ci_low", "ci_high", "n_empty"]])]
    for name in SELECTION_FIGURES:
        if name in figs:
            parts.append(_figure_html(name, figs[name]))
    return "\n".join(parts)


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
    selection, skipped = _selection(analysis)
    notes = list(analysis.notes) + ([skipped] if skipped else []) + \
        (list(selection.notes) if selection is not None else [])
    if selection is not None:
        tables["selection_recommendation"] = selection.recommendation
        tables["selection_bad_share"] = selection.bins
        tables["selection_radar"] = selection.radar
    for name, df in tables.items():
        index = name.startswith(("similarity_", "region_couplings_", "region_consistency",
                                 "recording_consistency"))
        _write_atomic(out / "tables" / f"{name}.csv", df.to_csv(index=index).encode())
    figs = plots.save_figures(analysis, out / "figures", selection=selection)
    summary = {"directory": analysis.directory, **analysis.summary(), "notes": notes,
               "figures": sorted(figs), "tables": sorted(tables)}
    if selection is not None:
        summary["selection"] = selection.recommendation.attrs.get("message", "")
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
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes)
                     + "</ul>")
    if selection is not None:
        parts.append(_selection_html(selection, figs))
    parts.append("<h2>Clusters</h2>" + _table_html(analysis.clusters))
    if analysis.structural is not None:
        parts.append("<h2>Structural comparison (Spearman)</h2>"
                     + _table_html(analysis.structural))
    parts.append("<h2>Figures</h2>")
    for name, path in figs.items():
        if name not in SELECTION_FIGURES:
            parts.append(_figure_html(name, path))
    parts.append("<h2>Tables</h2><ul>" + "".join(
        f"<li><code>tables/{esc(n)}.csv</code> ({len(t)} rows)</li>" for n, t in tables.items())
        + "</ul>")
    if analysis.assemblies is not None:
        parts.append(f"<h3>Assemblies of {esc(str(analysis.assembly_trial))}</h3>"
                     + _table_html(analysis.assemblies.table.sort_values("size",
                                                                         ascending=False)))
    if getattr(analysis, "cross_subject", None):       # joint studies (issue 14)
        from raysearch.analysis.cross_subject import report_section
        parts.append(report_section(analysis.cross_subject))
    parts.append("</body></html>")
    report = out / "report.html"
    _write_atomic(report, "\n".join(parts).encode())
    return report
