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
    "nrmse_vs_lambda": "Each nRMSE against λ; crosses are bad models; open triangles at the top "
    "edge are fits whose value is NaN or infinite (not dropped).",
    "bad_share_vs_lambda": "Share of bad models per log-lambda bin (number of models on top), as "
    "in the table of the model-selection section (raysearch.verdicts).",
    "region_couplings": "Region-level couplings (mean |J_ij| over neuron pairs, log10).",
    "similarity": "Pearson correlation between the models' off-diagonal couplings; rows and "
    "columns are the models, labelled by λ, grouped by k-means cluster (lines).",
    "pca": "Kernel PCA of the similarity matrix, coloured by lambda and by k-means cluster.",
    "assemblies": "Assemblies (members of the largest hidden units) on the unit coordinates.",
    "selection_radar": "The five nRMSE values of the recommended model, the best-objective model "
    "and a bad model (values below 0 drawn at 0).",
    "weight_histograms": "Distribution of the weights of all models, per lambda group.",
    "coupling_histograms": "Distribution of the couplings J_ij on a fixed seeded sample of "
    "neuron pairs (from the low-rank form), per lambda group.",
}
SELECTION_FIGURES = ("selection_radar", "weight_histograms", "coupling_histograms")
TITLES = {
    "identity_best": "Data against model: best model",
    "identity_bad": "Data against model: a bad model",
    "nrmse_vs_lambda": "nRMSE against λ",
    "bad_share_vs_lambda": "Share of bad models against λ",
    "region_couplings": "Region-level couplings",
    "similarity": "Similarity between models",
    "pca": "PCA of the models",
    "assemblies": "Assemblies",
    "selection_radar": "nRMSE per statistic of the selected models",
    "weight_histograms": "Weights by λ group",
    "coupling_histograms": "Couplings by λ group",
}
#: column headers of the report's tables (the CSV files keep the raw names)
COLUMN_LABELS = {
    "trial_id": "trial",
    "lam": "λ",
    "seed": "seed",
    "role": "role",
    "recording": "recording",
    "mean_nrmse": "mean nRMSE",
    "max_nrmse": "max nRMSE",
    "weight_density": "weight density",
    "bad": "bad",
    "lam_low": "λ from",
    "lam_high": "λ to",
    "n_fits": "fits",
    "n_bad": "bad",
    "share_bad": "bad share",
    "ci_low": "95% CI low",
    "ci_high": "95% CI high",
    "n_empty": "empty",
    "cluster": "cluster",
    "n_models": "models",
    "lam_min": "λ min",
    "lam_median": "λ median",
    "lam_max": "λ max",
    "penalties": "penalties",
    "mean_nrmse_median": "median mean nRMSE",
    "size": "size",
    "unit": "hidden unit",
    **{f"nrmse_{k}": f"nRMSE {k}" for k in ("v", "h", "vh", "vv", "hh")},
    "max_criteria": "worst criterion",
    "nllh": "reconstruction (nLLH)",
    "weights_converged": "0.01 < std(w) < 0.1",
    "bad_reason": "why bad",
    "unassessable": "unassessable statistics",
    "n_diverged": "diverged",
    "n_unstable": "unstable",
    "n_no_better_than_chance": "no better than chance",
    "n_undefined": "undefined",
    "n_unknown": "reason unknown",
}
SUMMARY_LABELS = {
    "n_models": "models analysed",
    "skipped_models": "model files skipped (unreadable)",
    "similarity_method": "similarity computed",
    "pearson_mean": "mean Pearson similarity between models",
    "n_clusters": "k-means clusters",
    "region_consistency_mean": "mean consistency of region couplings between models",
    "structural_spearman_best": "best Spearman correlation with the structural matrix",
}


def _summary_value(v) -> str:
    """A summary value as a reader writes it: a list as comma-separated items, none as "none"."""
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "none"
    return str(v)


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
    shown = df.head(max_rows).rename(columns=lambda c: COLUMN_LABELS.get(str(c), str(c)))
    return shown.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0, classes="tbl")


def _study_dict(directory) -> dict:
    """The study as run (``study.yaml`` in the experiment directory; safe_load), or {}."""
    import yaml

    path = Path(str(directory)) / "study.yaml"
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return d if isinstance(d, dict) else {}


def _bad_mask(res):
    """The one definition of a bad fit (raysearch.verdicts, where present)."""
    try:
        from raysearch.verdicts import bad_mask
    except ImportError:  # before raysearch.verdicts: the trial's flag, missing counted as bad
        return res["bad"].astype("boolean").fillna(True).astype(bool).to_numpy()
    return bad_mask(res)


def header_rows(analysis, results=None, now=None) -> list[tuple[str, str]]:
    """(label, value) rows of the report's header: the study, its data, when, which version.

    Parameters
    ----------
    analysis : raysearch.analysis.Analysis
    results : DataFrame, optional
        Every trial of the study (``load_results``); default ``analysis.results``.
    now : datetime, optional
        The report's date (default: now, UTC).
    """
    import datetime

    import numpy as np

    from raysearch import __version__

    study = _study_dict(analysis.directory)
    search = study.get("search") or {}
    res = results if results is not None else analysis.results
    rows = [("Study", str(study.get("name") or Path(str(analysis.directory)).name))]
    if study.get("description"):
        rows.append(("Description", str(study["description"])))
    if search:
        rows.append(("Search mode", str(search.get("mode", "optuna"))))
        rows.append(("Penalty", str(search.get("penalty", "?"))))
        lam = search.get("lam")
        if isinstance(lam, dict):
            rows.append(
                ("λ searched", f"{float(lam['low']):.3g} to {float(lam['high']):.3g} (log scale)")
            )
        elif isinstance(lam, list) and lam:
            rows.append(("λ searched", ", ".join(f"{float(x):.3g}" for x in lam)))
        if search.get("objective"):
            rows.append(("Objective", str(search["objective"])))
    if res is not None and "lam" in res and len(res):
        lam = res["lam"].astype(float).to_numpy()
        lam = lam[np.isfinite(lam)]
        span = f"; λ {lam.min():.3g} to {lam.max():.3g}" if lam.size else ""
        n_bad = int(_bad_mask(res).sum()) if "bad" in res else 0
        rows.append(("Trials", f"{len(res)} ({n_bad} flagged bad){span}"))
    rows.append(("Models analysed", str(len(analysis.trial_ids))))
    recs = study.get("recordings") or []
    if recs:
        data = []
        for r in recs:
            if r.get("synthetic") is not None:
                syn = r["synthetic"] or {}
                data.append(
                    f"{r.get('name', 'synthetic')} (synthetic fish, "
                    f"{syn.get('n_neurons', '?')} neurons, {syn.get('n_frames', '?')} "
                    "frames)"
                )
            else:
                data.append(f"{r.get('name') or ''} {r.get('path', '')}".strip())
        pre = study.get("preprocessing") or {}
        rows.append(
            ("Data", "; ".join(data) + (f"; signal {pre['signal']}" if pre.get("signal") else ""))
        )
    rows.append(("Experiment directory", str(analysis.directory)))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    rows.append(("Report date", now.strftime("%Y-%m-%d %H:%M UTC")))
    rows.append(("raysearch version", __version__))
    return rows


def _figure_html(name, path) -> str:
    esc = html.escape
    b64 = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f"<figure id='fig-{esc(name)}'><img alt='{esc(name)}' "
        f"src='data:image/png;base64,{b64}'><figcaption><b>{esc(TITLES.get(name, name))}"
        f"</b>. {esc(CAPTIONS.get(name, ''))} "
        f"<a href='figures/{esc(name)}.png'>PNG</a></figcaption></figure>"
    )


def _selection_html(selection, figs) -> str:
    """The "Model selection" section: recommendation, bad share per bin, radar, histograms."""
    esc = html.escape
    rec = selection.recommendation
    a = rec.attrs
    cols = [
        c
        for c in (
            "role",
            "trial_id",
            "lam",
            "seed",
            "mean_nrmse",
            "max_nrmse",
            "max_criteria",
            "nllh",
            "weight_density",
            "weights_converged",
            "bad",
            "unassessable",
        )
        if c in rec.columns
    ]
    parts = [
        "<h2 id='model-selection'>Model selection</h2>",
        f"<p>Rule: <b>{esc(str(a.get('rule')))}</b> on <b>{esc(str(a.get('objective')))}"
        f"</b>; tolerance {float(a.get('tolerance', 0.0)):.4g} "
        f"({esc(str(a.get('tolerance_source')))}). {esc(str(a.get('message', '')))}</p>",
        _table_html(rec[cols]) if len(rec) else "<p>No usable fit.</p>",
        "<h3>Bad models per lambda bin (95% Wilson interval)</h3>",
        _table_html(
            selection.bins[
                [
                    c
                    for c in (
                        "lam_low",
                        "lam_high",
                        "n_fits",
                        "n_bad",
                        "share_bad",
                        "ci_low",
                        "ci_high",
                        "n_empty",
                        "n_diverged",
                        "n_unstable",
                        "n_no_better_than_chance",
                        "n_undefined",
                        "n_unknown",
                    )
                    if c in selection.bins
                ]
            ]
        ),
    ]
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
    notes = (
        list(analysis.notes)
        + ([skipped] if skipped else [])
        + (list(selection.notes) if selection is not None else [])
    )
    if selection is not None:
        tables["selection_recommendation"] = selection.recommendation
        tables["selection_bad_share"] = selection.bins
        tables["selection_radar"] = selection.radar
    for name, df in tables.items():
        index = name.startswith(
            ("similarity_", "region_couplings_", "region_consistency", "recording_consistency")
        )
        _write_atomic(out / "tables" / f"{name}.csv", df.to_csv(index=index).encode())
    figs = plots.save_figures(analysis, out / "figures", selection=selection)
    summary = {
        "directory": analysis.directory,
        **analysis.summary(),
        "notes": notes,
        "figures": sorted(figs),
        "tables": sorted(tables),
    }
    if selection is not None:
        summary["selection"] = selection.recommendation.attrs.get("message", "")
    _write_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str).encode())

    esc = html.escape
    try:
        from raysearch.search import load_results

        all_trials = load_results(analysis.directory)
    except Exception:  # noqa: BLE001 - the header then counts the analysed models
        all_trials = None
    head = header_rows(analysis, all_trials)
    study_name = head[0][1]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>raysearch analysis: {esc(study_name)}</title>",
        "<style>body{font-family:sans-serif;font-size:16px;max-width:1200px;margin:auto;"
        "padding:0 12px}img{max-width:100%}figure{margin:24px 0}"
        "figcaption{font-size:15px}.tbl{border-collapse:collapse;font-size:14px}"
        ".tbl td,.tbl th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
        ".head th{text-align:left;padding:2px 16px 2px 0;font-weight:600}"
        ".head td{padding:2px 0}</style>",
        "</head><body>",
        f"<h1>raysearch analysis: {esc(study_name)}</h1>",
        "<table class='head'>"
        + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in head[1:])
        + "</table>",
        "<h2>Summary</h2><ul>",
    ]
    for k, v in analysis.summary().items():
        parts.append(
            f"<li>{esc(SUMMARY_LABELS.get(str(k), str(k).replace('_', ' ')))}: "
            f"{esc(f'{v:.4g}' if isinstance(v, float) else _summary_value(v))}</li>"
        )
    parts.append("</ul>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    if selection is not None:
        parts.append(_selection_html(selection, figs))
    parts.append("<h2>Clusters</h2>" + _table_html(analysis.clusters))
    if analysis.structural is not None:
        parts.append("<h2>Structural comparison (Spearman)</h2>" + _table_html(analysis.structural))
    parts.append("<h2>Figures</h2>")
    for name, path in figs.items():
        if name not in SELECTION_FIGURES:
            parts.append(_figure_html(name, path))
    parts.append(
        "<h2>Tables</h2><p>CSV files beside this report (full precision):</p><ul>"
        + "".join(
            f"<li><a href='tables/{esc(n)}.csv'>tables/{esc(n)}.csv</a> ({len(t)} rows)</li>"
            for n, t in tables.items()
        )
        + "</ul>"
    )
    if analysis.assemblies is not None:
        parts.append(
            f"<h3>Assemblies of {esc(str(analysis.assembly_trial))}</h3>"
            + _table_html(analysis.assemblies.table.sort_values("size", ascending=False))
        )
    if getattr(analysis, "cross_subject", None):  # joint studies (issue 14)
        from raysearch.analysis.cross_subject import report_section

        parts.append(report_section(analysis.cross_subject))
    parts.append("</body></html>")
    report = out / "report.html"
    _write_atomic(report, "\n".join(parts).encode())
    return report
