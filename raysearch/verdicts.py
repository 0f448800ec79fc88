"""The metric vocabulary and the verdicts of raysearch: one owner for what a trial's numbers mean.

Everything that names a statistic or an objective, or that decides whether a fit is finished,
bad (and why), usable, the best, or how many fits of a lambda range failed, lives here; the
evaluation (:mod:`raysearch.evaluation`), the trial's reports to Tune/Optuna
(:mod:`raysearch.search.trial`), ``load_results``, the selection rule (:mod:`raysearch.selection`),
the CLI tables, the analyzer's ranking and the report all call it, so they cannot disagree.
This module imports nothing from raysearch but :mod:`raysearch.errors`: it sits upstream of every
stage.

Vocabulary
----------
:data:`STATS`
    The five held-out statistics ``v, h, vh, vv, hh`` (see :mod:`raysearch.evaluation`).
:data:`NRMSE_COLUMNS`, :data:`RMSE_COLUMNS`
    Their nRMSE columns and the parts of each nRMSE.
:data:`RECONSTRUCTION`
    ``nllh``: the normalised reconstruction score on held-out frames (the paper's sixth
    criterion; 1 = perfect reconstruction, 0 = no better than the independent model of the
    training means, < 0 worse).
:data:`OBJECTIVES`
    What a study may minimise: ``mean_nrmse`` / ``max_nrmse`` (mean / worst nRMSE over the
    assessable statistics) and ``max_criteria`` (the worst of the assessable nRMSEs and of the
    reconstruction loss ``1 - nllh``: every criterion oriented so that 0 is perfect and 1 is
    chance, as the published model selection took the worst of its six criteria).
    :data:`DEFAULT_OBJECTIVE` is ``max_nrmse``.

Verdict of one fit (:func:`verdict`)
------------------------------------
A fit is **bad** when it is of no use as a model of the data, and ``bad_reason`` says why, the
first that applies in this order:

``diverged``
    the trainer stopped on non-finite parameters (or they are non-finite);
``unstable``
    its Gibbs chains went non-finite or left a sane range (a Gaussian-dReLU model that is not
    normalisable; see :func:`raysearch.evaluation.evaluate`), or another check (e.g. a bound on
    the parameters) said so;
``empty``
    no weight above the density threshold (``weight_density == 0``): no assembly, no coupling;
    its hidden statistics match the data trivially;
``no_better_than_chance``
    some assessable statistic is not clearly better than the shuffled reference: its nRMSE's
    upper confidence bound (the nRMSE plus :data:`Z_MARGIN` times its noise, from the
    evaluation's own jackknife and the spread of the shuffled reference) is not below 1;
``undefined``
    an assessable statistic has no nRMSE (NaN) for another reason.

A statistic that cannot inform (``unassessable``: uninformative by construction, e.g. ``v`` of
z-scored units, or by the data, where the training frames do not predict the test frames
clearly better than chance) is left out of the bad rule and of the objectives.

The objective of a bad fit is undefined and is reported as ``inf`` everywhere (Tune/Optuna, the
model file, ``load_results``, the CLI): a final NaN would leave an Optuna trial RUNNING, and a
finite value would let a useless fit compete. Its per-statistic nRMSEs are kept as computed.

Verdicts on a results table
---------------------------
:func:`finished_mask`, :func:`bad_mask`, :func:`bad_reasons`, :func:`usable_mask`,
:func:`best_index`, :func:`rank`, :func:`bad_share_by_lambda`. "Recommended" is the selection
rule of :func:`raysearch.selection.recommend`, which judges fits by :func:`usable_mask` and counts
failures with :data:`BAD_SCORE`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raysearch.errors import ConfigError, InputError

__all__ = [
    "STATS",
    "NRMSE_COLUMNS",
    "RMSE_COLUMNS",
    "RECONSTRUCTION",
    "OBJECTIVES",
    "DEFAULT_OBJECTIVE",
    "BAD_REASONS",
    "Z_MARGIN",
    "BAD_SCORE",
    "WEIGHT_STD_RANGE",
    "objective_values",
    "verdict",
    "reported_objective",
    "finished_mask",
    "bad_mask",
    "bad_reasons",
    "usable_mask",
    "best_index",
    "rank",
    "bad_share_by_lambda",
    "lambda_bins",
    "wilson_interval",
    "lam_groups",
    "check_objective",
    "study_objective",
]

# ------------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------------
#: The held-out statistics, in report order.
STATS = ("v", "h", "vh", "vv", "hh")
#: One nRMSE column per statistic.
NRMSE_COLUMNS = tuple(f"nrmse_{s}" for s in STATS)
#: The parts of each nRMSE: ``rmse_model_<s>``, ``rmse_opt_<s>``, ``rmse_shuf_<s>``.
RMSE_COLUMNS = tuple(
    f"{part}_{s}" for part in ("rmse_model", "rmse_opt", "rmse_shuf") for s in STATS
)
#: The normalised reconstruction score column (1 perfect, 0 independent baseline).
RECONSTRUCTION = "nllh"
#: Objectives a study may minimise (all are always reported).
OBJECTIVES = ("mean_nrmse", "max_nrmse", "max_criteria")
#: What a study minimises unless it says otherwise: the worst of the five nRMSEs, as the published
#: model selection did (it maximised the worst criterion); one ill-conditioned, very negative
#: nRMSE cannot make a fit look good under it.
DEFAULT_OBJECTIVE = "max_nrmse"
#: Why a fit is bad, in the order the rule checks them.
BAD_REASONS = ("diverged", "unstable", "empty", "no_better_than_chance", "undefined")
#: Standard deviations of the evaluation's own noise by which a statistic's nRMSE must stay below
#: 1 (chance) to count as better than chance, and by which the training frames' contrast must
#: exceed 0 for a statistic to be assessable. 3: about a 0.1% one-sided false alarm per statistic
#: for normal noise, i.e. under 1% over the five statistics of a fit.
Z_MARGIN = 3.0
#: What a bad fit counts in its lambda's score (:func:`raysearch.selection.lambda_scores`): the
#: chance level of every objective (nRMSE 1 = no better than shuffled statistics; reconstruction
#: loss 1 = no better than the independent model).
BAD_SCORE = 1.0
#: The reference's convergence check on the weights: the published connectivity fits kept models
#: with 0.01 < std(w) < 0.1 (reported as column ``weights_converged``; not part of the bad rule).
WEIGHT_STD_RANGE = (0.01, 0.1)

#: Reported per trial beside the objectives: the evaluation noise (jackknife standard error) of
#: each objective, ``<objective>_se``.
OBJECTIVE_SE_COLUMNS = tuple(f"{o}_se" for o in OBJECTIVES)
#: Every float figure a trial reports (Tune/Optuna and the model file) besides the RMSE parts.
METRIC_COLUMNS = (
    NRMSE_COLUMNS
    + OBJECTIVES
    + (RECONSTRUCTION,)
    + OBJECTIVE_SE_COLUMNS
    + ("sparsity", "weight_density", "weight_std")
)
#: Text columns of the verdict.
VERDICT_COLUMNS = ("bad", "bad_reason", "unassessable", "unassessable_reason", "weights_converged")


def check_objective(objective: str) -> str:
    """``objective`` if it is one of :data:`OBJECTIVES`, else a ConfigError."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    return objective


def study_objective(df: pd.DataFrame) -> str:
    """The objective of the study a ``load_results`` table came from (its ``search.objective``),
    :data:`DEFAULT_OBJECTIVE` when unknown."""
    study = df.attrs.get("study") or {}
    return (study.get("search") or {}).get("objective") or DEFAULT_OBJECTIVE


# ------------------------------------------------------------------------------------------------
# One fit
# ------------------------------------------------------------------------------------------------
def objective_values(nrmse: dict, unassessable, nllh: float = math.nan) -> dict:
    """The objectives of one fit from its nRMSEs.

    Parameters
    ----------
    nrmse : dict {stat: float}
    unassessable : collection of stat names left out (uninformative statistics).
    nllh : float
        Normalised reconstruction score (NaN when unknown: ``max_criteria`` is then NaN).

    Returns
    -------
    dict with ``mean_nrmse``, ``max_nrmse`` (over the assessable statistics; NaN when any of
    them is NaN or none is assessable) and ``max_criteria`` = max(max_nrmse, 1 - nllh).
    """
    vals = np.array([nrmse[s] for s in STATS if s not in set(unassessable)], dtype=float)
    if vals.size == 0 or not np.all(np.isfinite(vals)):
        mean = mx = math.nan
    else:
        mean, mx = float(vals.mean()), float(vals.max())
    crit = max(mx, 1.0 - float(nllh)) if math.isfinite(mx) and math.isfinite(nllh) else math.nan
    return {"mean_nrmse": mean, "max_nrmse": mx, "max_criteria": crit}


def verdict(
    nrmse: dict,
    nrmse_upper: dict,
    unassessable,
    params_finite: bool = True,
    diverged: bool = False,
    unstable: bool = False,
    weight_density: float = math.nan,
) -> tuple[bool, str]:
    """The bad flag and its reason for one fit (see the module docstring for the rule).

    Parameters
    ----------
    nrmse : dict {stat: float}
    nrmse_upper : dict {stat: float}
        Upper confidence bound of each nRMSE (nRMSE + :data:`Z_MARGIN` x its noise).
    unassessable : collection of stat names left out of the rule.
    params_finite, diverged, unstable : bool
    weight_density : float
        Fraction of weights with |w| > 0.01; exactly 0 marks an empty model.

    Returns
    -------
    (bad, reason) : (bool, str); reason is "" for a fit that is not bad.
    """
    if diverged or not params_finite:
        return True, "diverged"
    if unstable:
        return True, "unstable"
    if weight_density == 0:
        return True, "empty"
    skip = set(unassessable)
    assessed = [s for s in STATS if s not in skip]
    if any(not math.isfinite(nrmse[s]) for s in assessed):
        return True, "undefined"
    if any(not (nrmse_upper.get(s, nrmse[s]) < 1.0) for s in assessed):
        return True, "no_better_than_chance"
    return False, ""


def reported_objective(value, bad: bool) -> float:
    """What an objective is reported as: ``inf`` for a bad fit or a non-finite value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.inf
    return math.inf if bad or not math.isfinite(v) else v


# ------------------------------------------------------------------------------------------------
# Results tables (rows of load_results)
# ------------------------------------------------------------------------------------------------
def lam_groups(lam: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Label equal lambdas (up to ``rtol``) with the same integer, in increasing lambda order."""
    lam = np.asarray(lam, dtype=float)
    order = np.argsort(lam, kind="stable")
    labels = np.empty(len(lam), dtype=int)
    g = -1
    prev = None
    for i in order:
        if prev is None or not np.isclose(lam[i], prev, rtol=rtol, atol=0.0):
            g += 1
            prev = lam[i]
        labels[i] = g
    return labels


def _col(df: pd.DataFrame, name: str) -> np.ndarray:
    return (
        pd.to_numeric(df[name], errors="coerce").to_numpy(float)
        if name in df.columns
        else np.full(len(df), np.nan)
    )


def finished_mask(df: pd.DataFrame) -> np.ndarray:
    """Trials whose final evaluation is done (``finished``; a table without it: all)."""
    if "finished" not in df.columns:
        return np.ones(len(df), bool)
    return df["finished"].fillna(False).astype(bool).to_numpy()


def _empty(df: pd.DataFrame) -> np.ndarray:
    return _col(df, "weight_density") == 0


def bad_mask(df: pd.DataFrame) -> np.ndarray:
    """Bad fits: the ``bad`` flag true or missing, or an empty fit (``weight_density == 0``, which
    tables written before the ``empty`` reason existed did not flag)."""
    if "bad" not in df.columns:
        raise InputError(
            f"results table lacks column 'bad'; it has {list(df.columns)}. "
            "Pass the DataFrame of raysearch.load_results(DIR)."
        )
    return df["bad"].astype("boolean").fillna(True).astype(bool).to_numpy() | _empty(df)


def bad_reasons(df: pd.DataFrame) -> pd.Series:
    """The ``bad_reason`` of every row ("" for fits that are not bad), filled in where a table
    lacks it: ``empty`` for empty fits, ``unknown`` for other bad ones."""
    bad = bad_mask(df)
    given = (
        df["bad_reason"].fillna("").astype(str)
        if "bad_reason" in df.columns
        else pd.Series([""] * len(df), index=df.index)
    )
    fill = np.where(_empty(df), "empty", "unknown")
    out = np.where(bad, np.where(given.to_numpy() != "", given.to_numpy(), fill), "")
    return pd.Series(out, index=df.index, name="bad_reason")


def usable_mask(df: pd.DataFrame, objective: str) -> np.ndarray:
    """Fits that may be ranked: not bad (:func:`bad_mask`), a finite objective, a finite
    lambda >= 0."""
    if objective not in df.columns:
        raise InputError(
            f"results table lacks column {objective!r}; it has "
            f"{list(df.columns)}. Pass the DataFrame of raysearch.load_results(DIR)."
        )
    obj = _col(df, objective)
    lam = _col(df, "lam") if "lam" in df.columns else np.zeros(len(df))
    return np.isfinite(obj) & np.isfinite(lam) & (lam >= 0) & ~bad_mask(df)


def rank(df: pd.DataFrame, objective: str) -> np.ndarray:
    """Row positions, best first: usable fits by increasing objective (ties: larger lambda),
    then the others by increasing objective (non-finite last)."""
    use = usable_mask(df, objective)
    obj = _col(df, objective)
    obj = np.where(np.isfinite(obj), obj, np.inf)
    lam = _col(df, "lam") if "lam" in df.columns else np.zeros(len(df))
    lam = np.where(np.isfinite(lam), lam, -np.inf)
    return np.lexsort((-lam, obj, ~use))


def best_index(df: pd.DataFrame, objective: str):
    """Index label of the best fit (lowest objective among the usable ones; ties: larger lambda),
    None when no fit is usable."""
    if not usable_mask(df, objective).any():
        return None
    return df.index[int(rank(df, objective)[0])]


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def _first_of_groups(lam):
    labels = lam_groups(lam)
    _, first = np.unique(labels, return_index=True)
    return first


def lambda_bins(lam: np.ndarray, n_bins: int | None = None) -> np.ndarray:
    """Log-spaced bin edges over the positive lambdas.

    With ``n_bins=None``: one bin per distinct lambda when there are at most 12 of them and on
    average at least two fits each (a grid with seeds), edges at the geometric midpoints; otherwise
    round(sqrt(number of fits)) equal bins in log10(lambda), between 1 and 8.
    """
    lam = np.asarray(lam, dtype=float)
    lam = lam[np.isfinite(lam) & (lam > 0)]
    if lam.size == 0:
        raise InputError("no positive, finite lambda in the results: cannot bin by lambda")
    distinct = np.unique(lam[_first_of_groups(lam)])
    if n_bins is None and len(distinct) <= 12 and lam.size >= 2 * len(distinct):
        logs = np.log10(distinct)
        if len(logs) == 1:
            return 10.0 ** np.array([logs[0] - 0.5, logs[0] + 0.5])
        mids = (logs[1:] + logs[:-1]) / 2
        first = logs[0] - (mids[0] - logs[0])
        last = logs[-1] + (logs[-1] - mids[-1])
        return 10.0 ** np.concatenate([[first], mids, [last]])
    n_bins = int(np.clip(round(np.sqrt(lam.size)), 1, 8)) if n_bins is None else int(n_bins)
    if n_bins < 1:
        raise ConfigError(f"n_bins must be >= 1, got {n_bins}")
    lo, hi = np.log10(lam.min()), np.log10(lam.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.logspace(lo, hi, n_bins + 1)
    if lam.max() > lam.min():  # exact outer edges: 10**log10(x) may round below x
        edges[0], edges[-1] = lam.min(), lam.max()
    return edges


def bad_share_by_lambda(
    results: pd.DataFrame,
    n_bins: int | None = None,
    bins: np.ndarray | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Share of bad fits per (log) lambda bin, with a Wilson confidence interval.

    A fit counts as bad by :func:`bad_mask` (flag true or missing, or empty). Every fit in the
    table with a positive lambda is counted, whatever its reason (diverged fits included); pass
    the finished trials (:func:`finished_mask`) to count final verdicts only.

    Returns
    -------
    DataFrame with one row per bin: ``lam_low``, ``lam_high`` (bin edges; the last bin includes
    its upper edge), ``lam_center`` (geometric centre), ``n_fits``, ``n_bad``, ``share_bad``,
    ``ci_low``, ``ci_high``, ``n_empty`` (how many of the bad fits are empty) and one
    ``n_<reason>`` column per :data:`BAD_REASONS` entry (``n_unknown`` for bad fits of older
    tables without a reason). Bins without fits are kept with ``n_fits = 0`` and NaN share.
    """
    if "lam" not in results.columns:
        raise InputError(
            f"results table lacks column 'lam'; it has {list(results.columns)}. "
            "Pass the DataFrame of raysearch.load_results(DIR)."
        )
    lam = pd.to_numeric(results["lam"], errors="coerce").to_numpy(float)
    bad = bad_mask(results)
    reasons = bad_reasons(results).to_numpy()
    edges = lambda_bins(lam, n_bins) if bins is None else np.asarray(bins, dtype=float)
    keep = np.isfinite(lam) & (lam > 0)
    idx = np.searchsorted(edges, lam[keep], side="right") - 1
    # the outer edges belong to the outer bins, up to rounding of the edges
    idx[np.isclose(lam[keep], edges[-1], rtol=1e-9, atol=0.0)] = len(edges) - 2
    idx[np.isclose(lam[keep], edges[0], rtol=1e-9, atol=0.0)] = 0
    inside = (idx >= 0) & (idx < len(edges) - 1)
    rows = []
    for b in range(len(edges) - 1):
        sel = inside & (idx == b)
        n = int(sel.sum())
        k = int(bad[keep][sel].sum())
        lo, hi = wilson_interval(k, n, confidence)
        r = reasons[keep][sel]
        row = dict(
            lam_low=edges[b],
            lam_high=edges[b + 1],
            lam_center=float(np.sqrt(edges[b] * edges[b + 1])),
            n_fits=n,
            n_bad=k,
            share_bad=(k / n) if n else float("nan"),
            ci_low=lo,
            ci_high=hi,
            n_empty=int((r == "empty").sum()),
        )
        for reason in BAD_REASONS + ("unknown",):
            if reason != "empty":
                row[f"n_{reason}"] = int((r == reason).sum())
        rows.append(row)
    return pd.DataFrame(rows)
