"""Figures of an :class:`raysearch.analysis.Analysis` (drawing only; nothing is computed here).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot, so it works
headless and never changes the user's matplotlib backend. :func:`figures` returns all of them by
name; :func:`save_figures` writes them as PNG files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysearch.verdicts import NRMSE_COLUMNS

STAT_LABELS = {
    "v": "<v_i>",
    "h": "<h_mu>",
    "vh": "<v_i h_mu>",
    "vv": "<v_i v_j> - <v_i><v_j>",
    "hh": "<h_mu h_nu> - <h_mu><h_nu>",
}
# the statistics as a reader writes them (matplotlib mathtext)
STAT_TEX = {
    "v": r"$\langle v_i\rangle$",
    "h": r"$\langle h_\mu\rangle$",
    "vh": r"$\langle v_i h_\mu\rangle$",
    "vv": r"$\langle v_i v_j\rangle - \langle v_i\rangle\langle v_j\rangle$",
    "hh": r"$\langle h_\mu h_\nu\rangle - \langle h_\mu\rangle\langle h_\nu\rangle$",
}
#: axis and panel labels of result columns
LABELS = {
    **{f"nrmse_{k}": f"nRMSE of {v}" for k, v in STAT_TEX.items()},
    "mean_nrmse": "mean nRMSE",
    "max_nrmse": "max nRMSE",
    "lam": r"$\lambda$",
    "weight_density": "weight density",
}
#: font sizes (points; figures are drawn at 100 dpi and shown at their pixel size)
RC = {
    "font.size": 11,
    "axes.titlesize": 11,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 12,
}
NONFINITE_LABEL = "inf/NaN (drawn at the top edge)"


def _mark_nonfinite(ax, x, y, color="tab:red"):
    """Draw the points whose y is NaN or infinite (x finite) at the top edge of ``ax``, marked
    with open triangles, instead of leaving them out; returns how many there were."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    sel = np.isfinite(x) & ~np.isfinite(y)
    if not sel.any():
        return 0
    fin = y[np.isfinite(y)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    top = hi + 0.12 * ((hi - lo) or max(abs(hi), 1.0))
    ax.scatter(
        x[sel],
        np.full(sel.sum(), top),
        marker="^",
        s=40,
        facecolors="none",
        edgecolors=color,
        linewidths=1.4,
        label=NONFINITE_LABEL,
        clip_on=False,
        zorder=3,
    )
    ax.axhline(top, color="0.6", lw=0.6, ls=":")
    ax.set_ylim(top=top + 0.1 * ((hi - lo) or 1.0))
    return int(sel.sum())


def _figure_legend(fig, axes):
    """One legend below the panels, with every label drawn in any of them once."""
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(
            list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles)
        )


def _figure(w=6.0, h=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _log_x(ax):
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def identity_figure(stats: dict, title: str = ""):
    """Test data (x) against model (y), one panel per statistic.

    Parameters
    ----------
    stats : dict {stat: {"test": ndarray, "model": ndarray, ...}}
    """
    names = list(stats)
    ncol = min(3, max(1, len(names)))
    nrow = -(-max(1, len(names)) // ncol)
    fig = _figure(3.7 * ncol, 3.5 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    for ax, s in zip(axes, names):
        x = np.asarray(stats[s]["test"], float).ravel()
        y = np.asarray(stats[s]["model"], float).ravel()
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=5, alpha=0.5, rasterized=True)
        if ok.any():
            lo, hi = min(x[ok].min(), y[ok].min()), max(x[ok].max(), y[ok].max())
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        _mark_nonfinite(ax, x, y)
        if (~np.isfinite(x)).any():
            ax.text(
                0.02,
                0.98,
                f"{int((~np.isfinite(x)).sum())} with non-finite test data not shown",
                transform=ax.transAxes,
                va="top",
                fontsize=9,
            )
        ax.set_title(STAT_TEX.get(s, s))
        ax.set_xlabel("test data")
        ax.set_ylabel("model")
    fig.suptitle(title)
    _figure_legend(fig, axes)
    return fig


def nrmse_vs_lambda(results):
    """Each nRMSE against lambda (log x), bad models marked."""
    cols = [c for c in NRMSE_COLUMNS + ("mean_nrmse",) if c in results]
    ncol = min(3, len(cols))
    nrow = -(-len(cols) // ncol)
    fig = _figure(3.4 * ncol, 2.8 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(cols) :]:
        ax.set_visible(False)
    lam = results["lam"].astype(float).to_numpy()
    from raysearch.verdicts import bad_mask

    bad = bad_mask(results) if "bad" in results else np.zeros(len(results), bool)
    for ax, c in zip(axes, cols):
        y = results[c].astype(float).to_numpy()
        # a bad fit's objective is inf, an unassessable statistic NaN: neither is drawn
        ok = np.isfinite(y) & np.isfinite(lam) & (lam > 0)
        ax.scatter(lam[ok & ~bad], y[ok & ~bad], s=12, label="good")
        ax.scatter(lam[ok & bad], y[ok & bad], s=12, marker="x", color="tab:red", label="bad")
        if not ok.any():
            ax.text(
                0.5,
                0.5,
                "no finite value",
                ha="center",
                va="center",
                transform=ax.transAxes,
                fontsize=8,
            )
            pos = lam[np.isfinite(lam) & (lam > 0)]
            if pos.size:
                ax.set_xlim(pos.min() / 1.5, pos.max() * 1.5)
            else:
                continue
        _log_x(ax)
        _mark_nonfinite(ax, lam, results[c].astype(float).to_numpy())
        ax.set_xlabel(LABELS["lam"])
        ax.set_title(LABELS.get(c, c))
    axes[0].set_ylabel("nRMSE")
    _figure_legend(fig, axes)
    return fig


def bad_share_vs_lambda(results=None, n_bins=None, bins=None):
    """Share of bad models per log-lambda bin (bar width = bin, label = count), as counted by
    :func:`raysearch.verdicts.bad_share_by_lambda` (pass its table as ``bins`` to draw exactly
    what the report's table shows)."""
    from raysearch.verdicts import bad_share_by_lambda

    fig = _figure(5, 3.2)
    ax = fig.subplots()
    if bins is None and results is not None and "bad" in results and "lam" in results:
        lam = results["lam"].astype(float).to_numpy()
        if (np.isfinite(lam) & (lam > 0)).any():
            bins = bad_share_by_lambda(results, n_bins=n_bins)
    if bins is not None and len(bins):
        for r in bins.itertuples():
            if r.n_fits:
                ax.bar(
                    r.lam_low,
                    r.share_bad,
                    width=r.lam_high - r.lam_low,
                    align="edge",
                    alpha=0.7,
                    edgecolor="k",
                )
                ax.text(
                    r.lam_center,
                    r.share_bad,
                    str(int(r.n_fits)),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        _log_x(ax)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("lambda")
    ax.set_ylabel("share of bad models")
    return fig


def _heat(ax, fig, mat, labels=None, title="", log=False, vmin=None, vmax=None, cmap="viridis"):
    m = np.asarray(mat, float)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            m = np.where(m > 0, np.log10(m), np.nan)
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title, fontsize=9)
    if labels is not None and len(labels) <= 40:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)


def region_heatmaps(region_couplings: dict, region_names, consistency=None, max_panels=3):
    """log10 region coupling matrices of the first models (best first), and their mean."""
    items = list(region_couplings.items())[:max_panels]
    panels = items + (
        [("mean over models", np.nanmean(np.stack(list(region_couplings.values())), axis=0))]
        if len(region_couplings) > 1
        else []
    )
    ncol = min(2, len(panels))
    nrow = -(-len(panels) // ncol)
    fig = _figure(5.8 * ncol, 5.4 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, mat) in zip(axes, panels):
        _heat(ax, fig, mat, region_names, title=r"$\log_{10} J^R$" + f": {name}", log=True)
    return fig


def similarity_heatmap(pearson, labels=None, trial_ids=None, lams=None):
    """Model-by-model Pearson similarity, ordered by cluster (and by λ within a cluster).

    ``lams`` (one λ per model) labels the rows and columns by λ (trial ids otherwise); lines
    separate the clusters.
    """
    P = np.asarray(pearson, float)
    keys = np.asarray(lams, float) if lams is not None else np.zeros(len(P))
    order = np.lexsort((keys, labels)) if labels is not None else np.argsort(keys, kind="stable")
    fig = _figure(7.0, 6.0)
    ax = fig.subplots()
    if lams is not None:
        ticks = [f"{keys[i]:.2g}" for i in order]
    else:
        ticks = [trial_ids[i] for i in order] if trial_ids is not None else None
    _heat(
        ax,
        fig,
        P[np.ix_(order, order)],
        ticks,
        title="Pearson similarity of the models' couplings",
        vmin=-1,
        vmax=1,
        cmap="RdBu_r",
    )
    if lams is not None:
        ax.set_xlabel(r"$\lambda$ of the model (grouped by cluster)")
        ax.set_ylabel(r"$\lambda$ of the model")
    if labels is not None:
        lab = np.asarray(labels)[order]
        for b in np.flatnonzero(lab[1:] != lab[:-1]) + 0.5:
            ax.axhline(b, color="k", lw=1.2)
            ax.axvline(b, color="k", lw=1.2)
    return fig


def pca_scatter(coords, lam, labels, explained=None):
    """PCA of the models: coloured by lambda (log) and by k-means cluster."""
    from matplotlib.colors import LogNorm

    X = np.asarray(coords, float)
    y = X[:, 1] if X.shape[1] > 1 else np.zeros(len(X))
    fig = _figure(10, 4.2)
    a1, a2 = fig.subplots(1, 2)
    lam = np.asarray(lam, float)
    pos = np.isfinite(lam) & (lam > 0)
    norm = (
        LogNorm(vmin=lam[pos].min(), vmax=lam[pos].max())
        if pos.sum() and lam[pos].min() < lam[pos].max()
        else None
    )
    sc = a1.scatter(X[:, 0], y, c=lam, norm=norm, cmap="viridis", s=30)
    fig.colorbar(sc, ax=a1, label=r"$\lambda$")
    a1.set_title(r"coloured by $\lambda$")
    labels = np.asarray(labels)
    for k in np.unique(labels):
        a2.scatter(X[labels == k, 0], y[labels == k], s=25, label=f"cluster {k}")
    a2.legend()
    a2.set_title("coloured by k-means cluster")
    for ax in (a1, a2):
        ev = explained if explained is not None else [np.nan, np.nan]
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}%)" if len(ev) > 0 else "PC1")
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f}%)" if len(ev) > 1 else "PC2")
    return fig


def assembly_maps(coords, membership, sizes=None, n_show=10, title=""):
    """Assemblies on the unit coordinates: top (x-y) and side (x-z) views.

    Parameters
    ----------
    coords : ndarray, shape (N, 3)
    membership : ndarray of bool, shape (M, N)
    n_show : int
        The largest ``n_show`` assemblies are coloured; all units are drawn in grey.
    """
    C = np.asarray(coords, float)
    member = np.asarray(membership, bool)
    sizes = member.sum(1) if sizes is None else np.asarray(sizes)
    show = [int(i) for i in np.argsort(-sizes, kind="stable")[:n_show] if sizes[i] > 0]
    fig = _figure(11, 4.5)
    top, side = fig.subplots(1, 2)
    for ax, (a, b), name in ((top, (0, 1), "top view (x, y)"), (side, (0, 2), "side view (x, z)")):
        ax.scatter(C[:, a], C[:, b], s=2, c="0.85", rasterized=True)
        for i in show:
            ax.scatter(C[member[i], a], C[member[i], b], s=8, label=f"unit {i} ({sizes[i]})")
        ax.set_xlabel("x (um)")
        ax.set_ylabel("y (um)" if b == 1 else "z (um)")
        ax.set_title(name)
        ax.set_aspect("equal", adjustable="datalim")
    if show:
        side.legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    return fig


def nrmse_radar(radar, r_max=None):
    """Polar (radar) chart of the five nRMSE values of a few models.

    Parameters
    ----------
    radar : DataFrame
        Rows with ``role``, ``trial_id``, ``lam`` and the five nRMSE columns
        (:attr:`raysearch.selection.SelectionData.radar`).
    r_max : float, optional
        Outer radius; default max(1, largest finite value). Values below 0 are drawn at 0 and
        values above ``r_max`` (or infinite) at ``r_max``; the legend gives the raw maximum.
    """
    fig = _figure(7.0, 7.0)
    ax = fig.add_subplot(projection="polar")
    labels = [STAT_TEX[c.replace("nrmse_", "")] for c in NRMSE_COLUMNS]
    angles = np.linspace(0, 2 * np.pi, len(labels), endpoint=False)
    vals = radar[list(NRMSE_COLUMNS)].to_numpy(float) if len(radar) else np.zeros((0, 5))
    finite = vals[np.isfinite(vals)]
    top = r_max if r_max is not None else max(1.0, float(finite.max()) if finite.size else 1.0)
    styles = {
        "recommended": "tab:green",
        "best objective": "tab:blue",
        "bad": "tab:red",
        "worst (none bad)": "tab:orange",
    }
    for (_, r), v in zip(radar.iterrows(), vals):
        shown = np.clip(np.nan_to_num(v, nan=0.0, posinf=top, neginf=0.0), 0.0, top)
        ring = np.r_[shown, shown[:1]]
        col = styles.get(str(r["role"]).split(" = ")[0], None)
        ax.plot(
            np.r_[angles, angles[:1]],
            ring,
            color=col,
            lw=1.6,
            label=f"{r['role']}: lambda {float(r['lam']):.3g} (max {np.nanmax(v):.3g})",
        )
        ax.fill(np.r_[angles, angles[:1]], ring, color=col, alpha=0.12)
    ax.set_xticks(angles, labels)
    ax.set_ylim(0, top)
    ax.set_title("nRMSE per statistic (0 = as good as the training data)")
    fig.legend(fontsize=9, loc="outside lower center", ncols=1)
    return fig


def lambda_histograms(edges, hist, labels, xlabel, title=""):
    """Step histograms (densities, log y) of one quantity, one line per lambda group.

    Parameters
    ----------
    edges : ndarray, shape (B + 1,)
    hist : ndarray, shape (G, B)
    labels : list of str, length G
    """
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    fig = _figure(8.0, 4.6)
    ax = fig.subplots()
    cmap = colormaps["viridis"]
    norm = Normalize(0, max(1, len(labels) - 1))
    drawn = 0
    for g, (h, lab) in enumerate(zip(np.asarray(hist, float), labels)):
        if not np.any(h > 0):
            continue
        ax.stairs(np.where(h > 0, h, np.nan), edges, color=cmap(norm(g)), lw=1.5, label=lab)
        drawn += 1
    if drawn:
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    return fig


def selection_figures(selection) -> dict:
    """The model-selection figures of a :class:`raysearch.selection.SelectionData`, by name."""
    out = {}
    if len(selection.radar):
        out["selection_radar"] = nrmse_radar(selection.radar)
    if selection.hist_bins["n_models"].sum():
        labels = [
            f"{lab} ({n} models)"
            for lab, n in zip(selection.hist_bins["label"], selection.hist_bins["n_models"])
        ]
        out["weight_histograms"] = lambda_histograms(
            selection.weight_edges,
            selection.weight_hist,
            labels,
            r"weight $w_{i\mu}$",
            "Weights of all models, by lambda group",
        )
        out["coupling_histograms"] = lambda_histograms(
            selection.coupling_edges,
            selection.coupling_hist,
            labels,
            r"coupling $J_{ij}$",
            f"Couplings on {selection.n_pairs} sampled neuron pairs, by lambda group",
        )
    return out


def _lams_of(trial_ids, results):
    """λ of each trial id (NaN where unknown), or None without a ``lam`` column."""
    if "lam" not in results or "trial_id" not in results:
        return None
    by_id = dict(zip(results["trial_id"].astype(str), results["lam"].astype(float)))
    return np.array([by_id.get(str(t), np.nan) for t in trial_ids])


def _model_title(role, trial_id, results) -> str:
    lam = _lams_of([trial_id], results)
    lam_txt = f", $\\lambda$ = {lam[0]:.3g}" if lam is not None and np.isfinite(lam[0]) else ""
    return f"{role} model: trial {trial_id}{lam_txt}"


def figures(analysis, selection=None) -> dict:
    """All figures of an analysis, by name (missing inputs: that figure is left out)."""
    a = analysis
    out = {}
    for key in ("best", "bad"):
        if key in a.identity:
            tid, stats = a.identity[key]
            out[f"identity_{key}"] = identity_figure(stats, _model_title(key, tid, a.results))
    res = a.results
    if "lam" in res and res["lam"].notna().any():
        out["nrmse_vs_lambda"] = nrmse_vs_lambda(res)
        # the report's table (all finished trials of the study) when there is one
        out["bad_share_vs_lambda"] = bad_share_vs_lambda(
            res, bins=selection.bins if selection is not None else None
        )
    if a.region_couplings:
        out["region_couplings"] = region_heatmaps(a.region_couplings, a.region_names)
    out["similarity"] = similarity_heatmap(
        a.similarity.pearson, a.embedding.labels, a.trial_ids, lams=_lams_of(a.trial_ids, a.results)
    )
    sub = res[res["cluster"] >= 0]
    out["pca"] = pca_scatter(
        a.embedding.coords,
        sub["lam"].astype(float).to_numpy(),
        a.embedding.labels,
        a.embedding.explained,
    )
    if a.assemblies is not None and a.coords is not None:
        out["assemblies"] = assembly_maps(
            a.coords, a.assemblies.membership, title=f"assemblies of {a.assembly_trial}"
        )
    if selection is not None:
        out.update(selection_figures(selection))
    return out


def save_figures(analysis, directory, selection=None) -> dict:
    """Write every figure as ``<directory>/<name>.png``; returns {name: path}.

    ``selection``: a :class:`raysearch.selection.SelectionData` adds the model-selection figures.
    """
    import os

    import matplotlib

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    # font sizes readable at 100% zoom: texts take their size when drawn, so draw and save inside
    with matplotlib.rc_context(RC):
        for name, fig in figures(analysis, selection).items():
            p = d / f"{name}.png"
            tmp = d / f".{name}.png.tmp"
            fig.savefig(tmp, format="png")
            os.replace(tmp, p)
            paths[name] = p
    return paths
