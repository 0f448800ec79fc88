"""Which assemblies do fish share? Analysis of joint (cross-subject) and per-fish cRBMs.

Joint model (one cRBM fitted on a :class:`~raysearch.data.cohort.JointDataset`):
:func:`fish_expression` measures, per hidden unit ``mu`` and fish ``f``, how strongly fish ``f``
expresses the unit: the variance over fish ``f``'s frames of the unit's input ``I_mu(v) =
sum_i w_mu,i v_i`` (all frames, train and test) minus its part from independent voxel
fluctuations, per unit weight:

    e_mu,f = max(0, Var_f(I_mu) - sum_i w_mu,i^2 Var_f(v_i)) / sum_i w_mu,i^2
           = sum_{i != j} w_mu,i w_mu,j Cov_f(v_i, v_j) / ||w_mu||^2   (clipped at 0),

the co-fluctuation of the unit's voxels in fish f. A shared assembly makes its voxels co-fluctuate
in every fish; a private one only in its own fish (elsewhere its voxels fluctuate independently,
e ~ 0; with per-fish z-scoring every voxel has variance 1 in every fish, so the plain input
variance would not tell the two apart). The
*relative expression* divides by the largest fish's value, and a unit counts as expressed by a fish
when its relative expression is at least ``threshold`` (default 0.3).

Per-fish models (one cRBM per fish on the same common grid): :func:`match_units` pairs the hidden
units of two models one to one by the Hungarian algorithm on the absolute cosine of their weight
vectors (:func:`scipy.optimize.linear_sum_assignment`); a pair whose |cos| reaches
``min_cosine`` (default 0.5) is a *recurring* assembly. :func:`recurrence` gives, for every pair
of fish, the share of the first fish's (non-empty) units that recur in the second.
:func:`coupling_consistency` computes each model's region-level couplings
(:func:`raysearch.analysis.regions.region_couplings`) and their pairwise Pearson correlation of
log10 over non-zero entries (:func:`raysearch.analysis.regions.consistency`), the published
across-fish comparison.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raysearch.errors import InputError

__all__ = [
    "cross_subject_analysis",
    "write_cross_subject_report",
    "fish_expression",
    "expressing_fish",
    "match_units",
    "recurrence",
    "coupling_consistency",
    "shared_recovery",
    "expression_figure",
    "recurrence_figure",
    "report_section",
    "truth_on_grid",
]


def _weights(model):
    W = np.asarray(getattr(model, "weights_", model), dtype=np.float64)
    if W.ndim != 2:
        raise InputError(f"weights must be 2-D (M, N), got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise InputError("the model's weights contain NaN/inf (a diverged fit)")
    return W


def fish_expression(model, joint) -> pd.DataFrame:
    """Co-fluctuation ``e_mu,f`` of each hidden unit's voxels in each fish (module notes).

    Parameters
    ----------
    model : fitted CRBM or ndarray (M, U)
        A joint model (or its weights).
    joint : JointDataset

    Returns
    -------
    DataFrame, shape (M, F)
        Index ``unit``, one column per fish name.
    """
    W = _weights(model).astype(np.float32)
    if W.shape[1] != joint.n_units:
        raise InputError(
            f"the model has {W.shape[1]} visible units, the joint dataset {joint.n_units}"
        )
    out = np.zeros((W.shape[0], joint.n_fish))
    w2 = W.astype(np.float64) ** 2
    norm = np.maximum(w2.sum(axis=1), 1e-300)
    for f in range(joint.n_fish):
        X = np.concatenate([joint.train[joint.fish_train == f], joint.test[joint.fish_test == f]])
        total = (X @ W.T).astype(np.float64).var(axis=0)  # w^T C_f w, (M,)
        diag = w2 @ X.astype(np.float64).var(axis=0)  # sum_i w_i^2 C_f,ii
        out[:, f] = np.maximum(total - diag, 0.0) / norm
    out[w2.sum(axis=1) == 0] = 0.0
    return pd.DataFrame(
        out, index=pd.RangeIndex(W.shape[0], name="unit"), columns=list(joint.fish_names)
    )


def expressing_fish(expression: pd.DataFrame, threshold: float = 0.3) -> pd.DataFrame:
    """Relative expression and the fish that express each unit.

    Returns
    -------
    DataFrame
        Per unit: ``rel_<fish>`` (expression / the unit's largest), ``n_fish`` (fish with
        relative expression >= threshold), ``shared`` (n_fish == F; a unit with zero expression
        everywhere has n_fish 0).
    """
    E = expression.to_numpy(dtype=np.float64)
    mx = E.max(axis=1, keepdims=True)
    rel = np.divide(E, mx, out=np.zeros_like(E), where=mx > 0)
    df = pd.DataFrame(rel, index=expression.index, columns=[f"rel_{c}" for c in expression.columns])
    df["n_fish"] = (rel >= threshold).sum(axis=1)
    df["shared"] = df["n_fish"] == E.shape[1]
    return df


def _unit_norm(W):
    n = np.linalg.norm(W, axis=1, keepdims=True)
    return np.divide(W, n, out=np.zeros_like(W), where=n > 0)


def match_units(a, b):
    """One-to-one matching of two models' hidden units on |cosine| of their weights.

    Parameters
    ----------
    a, b : fitted CRBM or ndarray, shapes (M_a, U) and (M_b, U)
        On the same visible units (the common grid).

    Returns
    -------
    DataFrame
        One row per matched pair: ``unit_a``, ``unit_b``, ``abs_cosine``; sorted by unit_a.
    """
    from scipy.optimize import linear_sum_assignment

    A, B = _unit_norm(_weights(a)), _unit_norm(_weights(b))
    if A.shape[1] != B.shape[1]:
        raise InputError(
            f"the models have {A.shape[1]} and {B.shape[1]} visible units; "
            "per-fish models must be fitted on the same common grid"
        )
    C = np.abs(A @ B.T)
    r, c = linear_sum_assignment(-C)
    return pd.DataFrame({"unit_a": r, "unit_b": c, "abs_cosine": C[r, c]})


def recurrence(models, names=None, min_cosine: float = 0.5, min_norm: float = 1e-6):
    """Share of each fish's assemblies that recur in each other fish.

    Parameters
    ----------
    models : sequence of fitted CRBM or ndarray (M_f, U)
    names : sequence of str, optional
    min_cosine : float
        A matched pair recurs when its |cos| is at least this.
    min_norm : float
        Units with weight norm below this are empty and not counted.

    Returns
    -------
    share : DataFrame (F, F)
        ``share.loc[a, b]``: recurring share of fish a's non-empty units in fish b (1 on the
        diagonal).
    pairs : DataFrame
        Every matched pair: ``fish_a``, ``fish_b``, ``unit_a``, ``unit_b``, ``abs_cosine``,
        ``recurs``.
    """
    Ws = [_weights(m) for m in models]
    F = len(Ws)
    names = [f"fish{i}" for i in range(F)] if names is None else list(names)
    share = np.eye(F)
    rows = []
    for i in range(F):
        live = np.linalg.norm(Ws[i], axis=1) >= min_norm
        for j in range(F):
            if i == j:
                continue
            m = match_units(Ws[i], Ws[j])
            m = m[live[m["unit_a"].to_numpy()]]
            m.insert(0, "fish_b", names[j])
            m.insert(0, "fish_a", names[i])
            m["recurs"] = m["abs_cosine"] >= min_cosine
            rows.append(m)
            share[i, j] = float(m["recurs"].sum()) / max(1, int(live.sum()))
    pairs = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()
    return pd.DataFrame(share, index=names, columns=names), pairs


def coupling_consistency(models, unit_region, n_regions, names=None):
    """Region couplings of each per-fish model and their across-fish log-Pearson consistency.

    Parameters
    ----------
    models : sequence of fitted CRBM (``weights_``, ``hidden_var_``)
    unit_region : ndarray (U,), int
        Region of each unit of the common grid (``JointDataset.unit_region``).
    n_regions : int

    Returns
    -------
    mats : list of ndarray (R, R)
    consistency : DataFrame (F, F)
    """
    from raysearch.analysis.regions import consistency, region_couplings

    mats = [
        region_couplings(_weights(m), np.asarray(m.hidden_var_), unit_region, n_regions)
        for m in models
    ]
    names = [f"fish{i}" for i in range(len(models))] if names is None else list(names)
    return mats, consistency(mats, names)


def shared_recovery(model, truth_grid, shared) -> pd.DataFrame:
    """Best |cos| of each planted assembly (on the common grid) with any hidden unit.

    Parameters
    ----------
    model : fitted CRBM or ndarray (M, U)
    truth_grid : ndarray (K, U)
        :func:`truth_on_grid`.
    shared : ndarray (K,), bool

    Returns
    -------
    DataFrame: ``assembly``, ``shared``, ``best_unit``, ``abs_cosine``.
    """
    W = _unit_norm(_weights(model))
    G = _unit_norm(np.asarray(truth_grid, dtype=np.float64))
    C = np.abs(G @ W.T)
    return pd.DataFrame(
        {
            "assembly": np.arange(G.shape[0]),
            "shared": np.asarray(shared),
            "best_unit": C.argmax(1),
            "abs_cosine": C.max(1),
        }
    )


def cross_subject_analysis(
    joint, joint_model=None, per_fish_models=None, threshold: float = 0.3, min_cosine: float = 0.5
) -> dict:
    """Everything of this module for one cohort, as tables (the data step of the report).

    Parameters
    ----------
    joint : JointDataset
    joint_model : fitted CRBM, optional
        A model fitted on ``joint``: gives ``"expression"`` (:func:`expressing_fish` with the raw
        co-fluctuations as ``e_<fish>`` columns).
    per_fish_models : sequence of fitted CRBM, optional
        One per fish, on the common grid (e.g. fitted on ``joint.fish_dataset(f)``): gives
        ``"recurrence"``, ``"pairs"``, ``"consistency"`` and ``"region_couplings"``.

    Returns
    -------
    dict of DataFrame (and a list of (R, R) arrays under ``"region_couplings"``)
    """
    out = {}
    if joint_model is not None:
        e = fish_expression(joint_model, joint)
        rel = expressing_fish(e, threshold)
        for c in e.columns:
            rel[f"e_{c}"] = e[c]
        out["expression"] = rel
    if per_fish_models is not None:
        if len(per_fish_models) != joint.n_fish:
            raise InputError(f"{len(per_fish_models)} per-fish models for {joint.n_fish} fish")
        out["recurrence"], out["pairs"] = recurrence(per_fish_models, joint.fish_names, min_cosine)
        out["region_couplings"], out["consistency"] = coupling_consistency(
            per_fish_models, joint.unit_region, len(joint.region_names), joint.fish_names
        )
    return out


def write_cross_subject_report(results: dict, out_dir) -> dict:
    """Write the figures (``figures/cross_subject_*.png``), tables (``tables/cross_subject_*.csv``)
    and ``cross_subject.html`` of :func:`cross_subject_analysis`'s results (the drawing step).

    Returns
    -------
    dict
        ``{"html": Path, "figures": {name: Path}}``.
    """
    from pathlib import Path

    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    figs = {}
    if "expression" in results:
        figs["cross_subject_expression"] = expression_figure(results["expression"])
    if "recurrence" in results:
        figs["cross_subject_recurrence"] = recurrence_figure(results["recurrence"])
    paths = {}
    for name, fig in figs.items():
        paths[name] = out / "figures" / f"{name}.png"
        fig.savefig(paths[name])
    for name in ("expression", "recurrence", "pairs", "consistency", "nrmse"):
        if name in results:
            results[name].to_csv(out / "tables" / f"cross_subject_{name}.csv")
    html_path = out / "cross_subject.html"
    rel = paths
    html_path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>raysearch "
        "cross-subject</title></head><body>" + report_section(results, rel) + "</body></html>"
    )
    return {"html": html_path, "figures": paths}


# ----------------------------------------------------------------------------------------------
# figures (drawing only) and report section


def expression_figure(relative: pd.DataFrame, title: str = "Expression per fish"):
    """Heat map of relative expression: units (rows) x fish (columns)."""
    from raysearch.plots import _figure

    cols = [c for c in relative.columns if c.startswith("rel_")]
    M = relative[cols].to_numpy()
    order = np.lexsort((-M.max(1), -relative["n_fish"].to_numpy()))
    fig = _figure(4.0 + 0.3 * len(cols), max(3.0, 0.12 * M.shape[0] + 1.5))
    ax = fig.add_subplot(111)
    im = ax.imshow(M[order], aspect="auto", vmin=0, vmax=1, cmap="magma", interpolation="nearest")
    ax.set_xticks(range(len(cols)), [c[4:] for c in cols], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("hidden unit (sorted: shared first)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="co-fluctuation / max over fish")
    return fig


def recurrence_figure(share: pd.DataFrame, title: str = "Recurring assemblies"):
    """Heat map of :func:`recurrence`'s share matrix."""
    from raysearch.plots import _figure, _heat

    fig = _figure(5.0, 4.0)
    ax = fig.add_subplot(111)
    _heat(ax, fig, share.to_numpy(), list(share.index), title=title, vmin=0, vmax=1)
    return fig


def report_section(results: dict, figure_paths: dict | None = None) -> str:
    """HTML of the cross-subject section of a report.

    Parameters
    ----------
    results : dict
        Any of ``"expression"`` (:func:`expressing_fish`'s table), ``"recurrence"`` (share
        matrix), ``"consistency"`` (coupling consistency matrix), ``"nrmse"`` (per-fish table).
    figure_paths : dict name -> path, optional
        PNG files, embedded in the HTML.

    Returns
    -------
    str
    """
    import base64
    import html
    from pathlib import Path

    parts = ["<h2>Cross-subject assemblies</h2>"]
    if "nrmse" in results:
        parts.append("<h3>nRMSE per fish</h3>" + results["nrmse"].to_html(classes="tbl"))
    if "expression" in results:
        e = results["expression"]
        n_sh = int(e["shared"].sum())
        parts.append(
            f"<h3>Joint model: expression per fish</h3><p>{n_sh} of {len(e)} hidden "
            "units are expressed by every fish (relative co-fluctuation >= "
            "threshold).</p>" + e.to_html(classes="tbl", float_format="%.3g")
        )
    if "recurrence" in results:
        parts.append(
            "<h3>Per-fish models: share of assemblies that recur</h3>"
            + results["recurrence"].to_html(classes="tbl", float_format="%.3g")
        )
    if "consistency" in results:
        parts.append(
            "<h3>Region couplings: across-fish Pearson of log10</h3>"
            + results["consistency"].to_html(classes="tbl", float_format="%.3g")
        )
    for name, path in (figure_paths or {}).items():
        # embedded, so that the page is self-contained like report.html
        b64 = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    return "\n".join(parts)


def truth_on_grid(truth, joint, fish: int | None = None) -> np.ndarray:
    """Planted assemblies on the common grid: per fish the summed member weights of each voxel,
    summed over the fish that have the assembly (or of fish ``fish`` only).

    Returns
    -------
    ndarray, shape (K, U), float64
    """
    from raysearch.analysis.recovery import truth_in_units

    G = np.zeros((truth.n_assemblies, joint.n_units))
    for f in range(truth.n_fish) if fish is None else [int(fish)]:
        G += truth_in_units(truth.weights[f], joint.unit_of_neuron_per_fish[f], joint.n_units)
    return G
