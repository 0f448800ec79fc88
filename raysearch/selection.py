"""Model selection: from a finished study's results table to the lambda (and model) to use.

Minimising the held-out nRMSE alone picks weakly regularised fits that reproduce the statistics
but not the assemblies. The rule here is the internship's balance: **the sparsest fit whose
objective is within a tolerance of the best, among fits that are not bad**, where the tolerance is by
default the seed-to-seed spread of the objective near the best lambda (so it needs no tuning).

Everything works on the results DataFrame of :func:`raysearch.load_results` (columns ``lam``,
``bad``, the objective column, optionally ``weight_density``, ``seed``, ``trial_id``,
``model_path``) and returns plain data (dataclasses / DataFrames); drawing lives in
:mod:`raysearch.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from raysearch.errors import ConfigError, InputError

#: Objectives a study may minimise; both are always reported.
OBJECTIVES = ("mean_nrmse", "max_nrmse")
RULES = ("sparsest", "best")
SPARSITY_BY = ("lam", "weight_density")


def _lam_groups(lam: np.ndarray, rtol: float = 1e-9) -> np.ndarray:
    """Label equal lambdas (up to ``rtol``) with the same integer, in increasing lambda order."""
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


def _check_columns(results: pd.DataFrame, needed) -> None:
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise InputError(
            f"results table lacks column(s) {missing}; it has {list(results.columns)}. "
            "Pass the DataFrame of raysearch.load_results(DIR)."
        )


def _usable(results: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Rows that are finished, not bad, and have a finite objective and lambda."""
    df = results.copy()
    obj = pd.to_numeric(df[objective], errors="coerce").astype(float)
    lam = pd.to_numeric(df["lam"], errors="coerce").astype(float)
    bad = df["bad"].fillna(True).astype(bool)
    ok = np.isfinite(obj) & np.isfinite(lam) & (lam >= 0) & ~bad
    df = df.loc[ok].copy()
    df[objective] = obj[ok]
    df["lam"] = lam[ok]
    return df


def seed_spread(results: pd.DataFrame, objective: str = "mean_nrmse", n_near: int = 5) -> float:
    """Seed-to-seed spread (standard deviation, ddof=1) of the objective near the best lambda.

    The good fits at the lambda of the best fit are used when there are at least two of them
    (a grid study with seeds). Otherwise (one fit per lambda, as in a continuous Optuna search)
    the ``n_near`` good fits nearest to the best lambda on a log scale stand in for seeds.
    Returns 0.0 when fewer than two good fits exist.

    Parameters
    ----------
    results : DataFrame with columns ``lam``, ``bad`` and ``objective``.
    objective : column to minimise.
    n_near : number of neighbouring fits used when the best lambda has a single fit.
    """
    _check_columns(results, ["lam", "bad", objective])
    df = _usable(results, objective)
    if len(df) < 2:
        return 0.0
    lam = df["lam"].to_numpy()
    obj = df[objective].to_numpy()
    groups = _lam_groups(lam)
    best = int(np.argmin(obj))
    same = obj[groups == groups[best]]
    if len(same) >= 2:
        return float(np.std(same, ddof=1))
    loglam = np.log10(np.maximum(lam, np.finfo(float).tiny))
    near = np.argsort(np.abs(loglam - loglam[best]), kind="stable")[: max(2, n_near)]
    return float(np.std(obj[near], ddof=1))


@dataclass
class Recommendation:
    """What the selection rule recommends, and why.

    Attributes
    ----------
    lam : recommended lambda, or None when no fit is usable.
    row : the recommended fit (a row of the results table), or None.
    best_row : the fit with the best objective (None when no fit is usable).
    runner_up : the next candidate by the same rule (prefers another lambda), or None.
    rule, objective, sparsity_by : the settings used.
    tolerance : the objective tolerance (absolute) used around the best value.
    tolerance_source : "seed spread" or "given".
    candidates : the good fits within tolerance, in the order the rule ranks them.
    n_fits, n_bad : number of fits in the table and how many were bad or unusable.
    message : one human-readable sentence.
    """

    lam: float | None
    row: pd.Series | None
    best_row: pd.Series | None
    runner_up: pd.Series | None
    rule: str
    objective: str
    sparsity_by: str
    tolerance: float
    tolerance_source: str
    candidates: pd.DataFrame = field(repr=False)
    n_fits: int = 0
    n_bad: int = 0
    message: str = ""

    def to_frame(self) -> pd.DataFrame:
        """The recommended, best-objective and runner-up fits as one small DataFrame."""
        rows = []
        for role, r in (("recommended", self.row), ("best objective", self.best_row),
                        ("runner-up", self.runner_up)):
            if r is not None:
                d = r.to_dict()
                d["role"] = role
                rows.append(d)
        out = pd.DataFrame(rows)
        if len(out):
            out = out[["role"] + [c for c in out.columns if c != "role"]]
        out.attrs.update(rule=self.rule, objective=self.objective,
                         tolerance=self.tolerance, tolerance_source=self.tolerance_source)
        return out


def recommend(results: pd.DataFrame, objective: str = "mean_nrmse", rule: str = "sparsest",
              tolerance: float | None = None, sparsity_by: str = "lam") -> Recommendation:
    """Recommend a lambda and a model from a results table.

    ``rule="sparsest"`` (default): among fits that are not bad and have a finite objective, take
    those whose objective is at most ``best + tolerance`` and return the sparsest of them: the
    largest lambda (``sparsity_by="lam"``) or the lowest weight density
    (``sparsity_by="weight_density"``); ties go to the lower objective. ``rule="best"`` returns
    the fit with the lowest objective.

    Parameters
    ----------
    results : DataFrame, one row per trial, with columns ``lam``, ``bad``, ``objective`` (and
        ``weight_density`` when ``sparsity_by="weight_density"``).
    objective : "mean_nrmse" or "max_nrmse" (any numeric column is accepted).
    rule : "sparsest" or "best".
    tolerance : absolute tolerance on the objective; None = :func:`seed_spread`.
    sparsity_by : "lam" or "weight_density".

    Returns
    -------
    Recommendation
    """
    if rule not in RULES:
        raise ConfigError(f"unknown selection rule {rule!r}; use one of {RULES}")
    if sparsity_by not in SPARSITY_BY:
        raise ConfigError(f"unknown sparsity measure {sparsity_by!r}; use one of {SPARSITY_BY}")
    if tolerance is not None and not (np.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    needed = ["lam", "bad", objective] + (["weight_density"] if sparsity_by == "weight_density" else [])
    _check_columns(results, needed)

    good = _usable(results, objective)
    n_fits = len(results)
    n_bad = n_fits - len(good)
    if sparsity_by == "weight_density":
        wd = pd.to_numeric(good["weight_density"], errors="coerce").astype(float)
        good = good.loc[np.isfinite(wd)].copy()
        good["weight_density"] = wd[np.isfinite(wd)]
    if len(good) == 0:
        return Recommendation(
            lam=None, row=None, best_row=None, runner_up=None, rule=rule, objective=objective,
            sparsity_by=sparsity_by, tolerance=float(tolerance or 0.0),
            tolerance_source="given" if tolerance is not None else "seed spread",
            candidates=good, n_fits=n_fits, n_bad=n_bad,
            message=f"no usable fit: all {n_fits} fits are bad or have no finite {objective}",
        )

    best_idx = good[objective].idxmin()
    best_row = good.loc[best_idx]
    if tolerance is None:
        tol, source = seed_spread(results, objective), "seed spread"
    else:
        tol, source = float(tolerance), "given"

    if rule == "best":
        ranked = good.sort_values([objective, "lam"], ascending=[True, False], kind="stable")
        cands = ranked.iloc[:1]
    else:
        cands = good.loc[good[objective] <= best_row[objective] + tol]
        if sparsity_by == "lam":
            ranked = cands.sort_values(["lam", objective], ascending=[False, True], kind="stable")
        else:
            ranked = cands.sort_values(["weight_density", objective], ascending=[True, True],
                                       kind="stable")
        cands = ranked
    row = ranked.iloc[0]
    # Runner-up: the next ranked fit at another lambda if any, else the next fit at all.
    # Runner-up: the next candidate at another lambda, else the next candidate, else the best
    # remaining good fit outside the tolerance.
    pool = ranked.iloc[1:] if rule == "sparsest" else good.iloc[0:0]
    rest = good.drop(index=row.name).sort_values(objective, kind="stable")
    other = pool.loc[~np.isclose(pool["lam"].to_numpy(float), float(row["lam"]), rtol=1e-9, atol=0)]
    runner = next((p.iloc[0] for p in (other, pool, rest) if len(p)), None)

    what = "largest lambda" if sparsity_by == "lam" else "lowest weight density"
    if rule == "sparsest":
        msg = (f"lambda = {row['lam']:.4g}: the {what} among {len(cands)} good fit(s) with "
               f"{objective} <= best {best_row[objective]:.4g} + tolerance {tol:.3g} ({source}); "
               f"{n_bad} of {n_fits} fits bad or unusable")
    else:
        msg = (f"lambda = {row['lam']:.4g}: lowest {objective} ({row[objective]:.4g}); "
               f"{n_bad} of {n_fits} fits bad or unusable")
    return Recommendation(lam=float(row["lam"]), row=row, best_row=best_row, runner_up=runner,
                          rule=rule, objective=objective, sparsity_by=sparsity_by, tolerance=tol,
                          tolerance_source=source, candidates=cands, n_fits=n_fits, n_bad=n_bad,
                          message=msg)


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n (scipy's ``binomtest``)."""
    from scipy.stats import binomtest

    if n == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


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
    return np.logspace(lo, hi, n_bins + 1)


def _first_of_groups(lam):
    labels = _lam_groups(lam)
    _, first = np.unique(labels, return_index=True)
    return first


def bad_share_by_lambda(results: pd.DataFrame, n_bins: int | None = None,
                        bins: np.ndarray | None = None, confidence: float = 0.95) -> pd.DataFrame:
    """Share of bad fits per (log) lambda bin, with a Wilson confidence interval.

    A fit counts as bad when its ``bad`` flag is true or missing. Every fit with a positive lambda
    is counted, finished or diverged.

    Returns
    -------
    DataFrame with one row per bin: ``lam_low``, ``lam_high`` (bin edges; the last bin includes
    its upper edge), ``lam_center`` (geometric centre), ``n_fits``, ``n_bad``, ``share_bad``,
    ``ci_low``, ``ci_high``. Empty bins are kept with ``n_fits = 0`` and NaN share.
    """
    _check_columns(results, ["lam", "bad"])
    lam = pd.to_numeric(results["lam"], errors="coerce").to_numpy(float)
    bad = results["bad"].fillna(True).astype(bool).to_numpy()
    edges = lambda_bins(lam, n_bins) if bins is None else np.asarray(bins, dtype=float)
    keep = np.isfinite(lam) & (lam > 0)
    idx = np.searchsorted(edges, lam[keep], side="right") - 1
    idx[lam[keep] == edges[-1]] = len(edges) - 2
    inside = (idx >= 0) & (idx < len(edges) - 1)
    rows = []
    for b in range(len(edges) - 1):
        sel = inside & (idx == b)
        n = int(sel.sum())
        k = int(bad[keep][sel].sum())
        lo, hi = wilson_interval(k, n, confidence)
        rows.append(dict(lam_low=edges[b], lam_high=edges[b + 1],
                         lam_center=float(np.sqrt(edges[b] * edges[b + 1])), n_fits=n, n_bad=k,
                         share_bad=(k / n) if n else float("nan"), ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows)


def selection_summary(results: pd.DataFrame, objective: str = "mean_nrmse", rule: str = "sparsest",
                      tolerance: float | None = None, sparsity_by: str = "lam",
                      n_bins: int | None = None) -> tuple[Recommendation, pd.DataFrame]:
    """The recommendation and the per-bin bad-share table, as shown after ``raysearch results``."""
    return (recommend(results, objective=objective, rule=rule, tolerance=tolerance,
                      sparsity_by=sparsity_by),
            bad_share_by_lambda(results, n_bins=n_bins))
