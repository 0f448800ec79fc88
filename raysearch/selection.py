"""Model selection: from a finished study's results table to the lambda (and model) to use.

Minimising the held-out nRMSE alone picks weakly regularised fits that reproduce the statistics
but not the assemblies. The rule here is the internship's balance: **the sparsest lambda whose
score is within a tolerance of the best lambda's**, where a lambda's score is the mean objective
over all its fits with every bad fit counting as chance (:func:`lambda_scores`,
:data:`raysearch.verdicts.BAD_SCORE` = 1), and a lambda with more than :data:`MAX_BAD_SHARE` bad
fits is never a candidate: a lambda where most seeds failed cannot be recommended, and the rule
does not lean toward the breakdown edge where failures concentrate.
The default tolerance needs no tuning: it is the margin within which a lambda cannot be told apart
from the best at 95% confidence (:func:`default_tolerance`: Gupta's subset selection,
``d_K * sqrt(2) * sigma_m`` for K lambdas, with ``sigma_m`` the noise of one lambda's mean
objective from :func:`mean_noise`): the evaluation's own noise (each fit reports the jackknife
standard error of its objective) with the robust seed-to-seed spread as a floor. Tables of older
studies, without that noise, fall back to the scatter of the lambda means along the grid (which
also measures the curvature of the lambda curve; see :func:`mean_noise`).
Bad fits (any ``bad_reason``, empty ones included: no weight above the density threshold) are
never candidates. What "bad", "usable" and "best" mean is :mod:`raysearch.verdicts`'.

Entry points: :func:`recommend` (the rule on a results table), :func:`bad_share_by_lambda`
(bad share per log-lambda bin with Wilson intervals, from :mod:`raysearch.verdicts`),
:func:`select_model` (both as DataFrames, from the ``load_results`` table of a study: exported as
``raysearch.select_model``) and :func:`selection_data` (what the report's "Model selection"
section draws).

Everything works on the results DataFrame of :func:`raysearch.load_results` (columns ``lam``,
``bad``, the objective column, optionally ``weight_density``, ``seed``, ``trial_id``,
``model_path``) and returns plain data (dataclasses / DataFrames); drawing lives in
:mod:`raysearch.plots`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from raysearch import verdicts
from raysearch.errors import ConfigError, InputError

# re-exported here for the callers of the selection stage (they are raysearch.verdicts')
from raysearch.verdicts import (  # noqa: F401
    BAD_SCORE,
    DEFAULT_OBJECTIVE,
    NRMSE_COLUMNS,
    OBJECTIVES,
    bad_share_by_lambda,
    lambda_bins,
    wilson_interval,
)

RULES = ("sparsest", "best")
SPARSITY_BY = ("lam", "weight_density")
#: Fewest lambdas (with a usable fit) from which :func:`mean_noise` reads the noise from the scatter
#: of the lambda means along the grid (4 steps: the median is not set by one steep step); only for
#: tables without the evaluation's own noise (``<objective>_se``, studies before issue 12).
MIN_LAMBDAS_FOR_SCATTER = 5
#: A lambda whose share of bad fits is above this is never recommended, whatever its score.
MAX_BAD_SHARE = 0.5
_lam_groups = verdicts.lam_groups
_first_of_groups = verdicts._first_of_groups


def _check_columns(results: pd.DataFrame, needed) -> None:
    missing = [c for c in needed if c not in results.columns]
    if missing:
        raise InputError(
            f"results table lacks column(s) {missing}; it has {list(results.columns)}. "
            "Pass the DataFrame of raysearch.load_results(DIR)."
        )


def _empty(results: pd.DataFrame) -> np.ndarray:
    """Fits without a single weight above the density threshold (``weight_density == 0``): bad
    (reason ``empty``, :mod:`raysearch.verdicts`); counted here for the messages."""
    if "weight_density" not in results.columns:
        return np.zeros(len(results), bool)
    wd = pd.to_numeric(results["weight_density"], errors="coerce").to_numpy(float)
    return wd == 0


def _usable(results: pd.DataFrame, objective: str) -> pd.DataFrame:
    """Rows that :func:`raysearch.verdicts.usable_mask` accepts (not bad, not empty, finite
    objective and lambda), with numeric ``lam`` and objective columns."""
    ok = verdicts.usable_mask(results, objective)
    df = results.loc[ok].copy()
    df[objective] = pd.to_numeric(df[objective], errors="coerce").astype(float)
    df["lam"] = pd.to_numeric(df["lam"], errors="coerce").astype(float)
    return df


def _group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Per row: the mean of ``values`` over the rows of its group, shape (n,)."""
    sums = np.bincount(groups, weights=values)
    return (sums / np.bincount(groups))[groups]


def seed_spread(
    results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE, n_near: int = 5
) -> float:
    """Seed-to-seed spread (standard deviation) of the objective near the best lambda.

    The rule's former default tolerance, kept for comparison (``recommend(df,
    tolerance=seed_spread(df))``); the default is now :func:`default_tolerance`.

    The best lambda is the one with the lowest mean objective over its good fits (seeds).
    Grid study with seeds (the best lambda has at least two good fits): the pooled within-lambda
    standard deviation over the best lambda and its immediate neighbours in the grid (the next
    smaller and next larger lambda that have at least two good fits), i.e.
    ``sqrt(sum_g (n_g - 1) s_g^2 / sum_g (n_g - 1))`` with ``s_g`` the ddof=1 standard deviation of
    lambda ``g``. With two seeds per lambda a single lambda gives one degree of freedom; its
    neighbours triple that. Otherwise (one fit per lambda, as in a continuous Optuna search) the
    ``n_near`` good fits nearest to the best lambda on a log scale stand in for seeds (ddof=1).
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
    means = _group_means(obj, groups)
    best = int(np.argmin(means))
    gb = groups[best]
    if (groups == gb).sum() >= 2:
        sizes = np.bincount(groups)
        repeated = np.flatnonzero(sizes >= 2)
        pos = int(np.searchsorted(repeated, gb))
        use = repeated[max(0, pos - 1) : pos + 2]
        ss = sum(float(np.sum((obj[groups == g] - obj[groups == g].mean()) ** 2)) for g in use)
        dof = int(sum(sizes[g] - 1 for g in use))
        return float(np.sqrt(ss / dof))
    loglam = np.log10(np.maximum(lam, np.finfo(float).tiny))
    near = np.argsort(np.abs(loglam - loglam[best]), kind="stable")[: max(2, n_near)]
    return float(np.std(obj[near], ddof=1))


@lru_cache(maxsize=256)
def subset_constant(k: int, confidence: float = 0.95) -> float:
    """Critical value ``d`` of Gupta's subset selection for the smallest of ``k`` means.

    With ``k`` lambda means ``m_j``, each an estimate of its lambda's true objective with the same
    noise standard deviation ``sigma_m``, the rule keeps every lambda with
    ``m_j <= min(m) + d * sqrt(2) * sigma_m``. ``d`` solves

        integral phi(z) Phi(z + d sqrt(2))^(k - 1) dz = confidence,

    so that, even when all ``k`` true objectives are equal (the least favourable case), the kept set
    contains the truly best lambda with probability ``confidence`` (Gupta 1965, known variance).
    It accounts for the best mean being the minimum of ``k`` noisy means (biased low): ``d`` grows
    with ``k``. ``k = 2`` gives the one-sided normal quantile (1.645 at 95%); ``k = 1`` gives 0.

    Parameters
    ----------
    k : int, number of lambdas compared (>= 1).
    confidence : float in (0, 1).

    Returns
    -------
    float
    """
    from scipy import integrate, optimize, stats

    k = int(k)
    if k < 1:
        raise ConfigError(f"subset selection needs at least one lambda, got k={k}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    if k == 1:
        return 0.0

    def p_keep(d):
        f = lambda z: stats.norm.pdf(z) * stats.norm.cdf(z + d * np.sqrt(2.0)) ** (k - 1)  # noqa
        return integrate.quad(f, -12.0, 12.0, limit=200, epsabs=1e-12)[0] - confidence

    return float(optimize.brentq(p_keep, 0.0, 20.0, xtol=1e-10))


def lambda_means(results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE) -> pd.DataFrame:
    """Mean objective of each lambda over its usable fits (not bad, not empty, finite).

    Returns
    -------
    DataFrame, one row per distinct lambda in increasing order: ``lam``, ``n`` (usable fits),
    ``mean`` (of the objective over them).
    """
    _check_columns(results, ["lam", "bad", objective])
    df = _usable(results, objective)
    if len(df) == 0:
        return pd.DataFrame({"lam": [], "n": [], "mean": []})
    groups = _lam_groups(df["lam"].to_numpy(float))
    obj = df[objective].to_numpy(float)
    lam = df["lam"].to_numpy(float)
    n = np.bincount(groups)
    return pd.DataFrame(
        {
            "lam": np.bincount(groups, weights=lam) / n,
            "n": n,
            "mean": np.bincount(groups, weights=obj) / n,
        }
    )


def mean_noise(results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE) -> float:
    """Noise (standard deviation) of one lambda's mean objective, ``sigma_m``.

    Studies that report the evaluation's own noise (column ``<objective>_se``: the jackknife
    standard error of each fit's objective over chains and held-out blocks, see
    :mod:`raysearch.evaluation`): the larger of :func:`evaluation_noise` and the robust seed
    spread over ``sqrt(n)`` (:func:`robust_seed_spread`; seeds give different models, a noise the
    evaluation of one model cannot see). The evaluation noise is not divided by ``sqrt(n)``: the
    seeds of a lambda share the held-out frames and the evaluation seed. The scatter of the lambda
    means along the grid is not used then: it measures the curvature of the lambda curve as much
    as noise (measured: a tolerance of 0.46 in max nRMSE, wider than the whole spread of the good
    fits, recommended a lambda that recovered the planted assemblies worse than the best fit).

    Older tables (without ``<objective>_se``): two estimates of the same noise, each blind to part
    of it; the larger is returned:

    - **scatter along the grid**: the lambda means ``m_1..m_K`` in increasing lambda differ from
      their neighbours by ``2 sigma_m^2`` in variance (plus the trend, which is small on the
      plateau the rule looks at); robustly, ``sigma_m = 1.4826 * median|m_{j+1} - m_j| / sqrt(2)``
      (the median discards the steep steps where the fits break down). It sees the evaluation
      noise that the seeds of one lambda share: every model of a study is evaluated with the same
      evaluation seed on the same held-out frames, so two seeds of one lambda (similar models)
      get similar sampling errors, and the seed-to-seed spread misses them. Used from
      :data:`MIN_LAMBDAS_FOR_SCATTER` lambdas on: with fewer, one step of the trend would pass for
      noise (with two lambdas the "scatter" is their difference itself).
    - **seed spread** (grids with seeds: the best lambda has ``n >= 2`` usable fits):
      :func:`robust_seed_spread` over ``sqrt(n)``. Robust (a median over lambdas) because one
      freak evaluation (an nRMSE of one statistic far below 0) must not widen the tolerance to
      the whole grid. Without repeats (one fit per lambda, a continuous search) the grid scatter
      alone is used: it is then the scatter of single fits, seed noise included.

    Returns 0.0 when neither can be estimated (fewer lambdas than that and one fit at the best).

    Parameters
    ----------
    results : DataFrame with columns ``lam``, ``bad`` and ``objective``.
    objective : column to minimise.
    """
    means = lambda_means(results, objective)
    if len(means) == 0:
        return 0.0
    n_best = int(means["n"].iloc[int(np.argmin(means["mean"].to_numpy(float)))])
    own = evaluation_noise(results, objective)
    if own is not None:
        # the evaluation measured its own noise: use it (issue 12.5), not the grid's curvature
        seeds = robust_seed_spread(results, objective) / np.sqrt(n_best) if n_best >= 2 else 0.0
        return max(own, seeds)
    scatter = 0.0
    if len(means) >= MIN_LAMBDAS_FOR_SCATTER:
        steps = np.abs(np.diff(means["mean"].to_numpy(float)))
        scatter = float(1.4826 * np.median(steps) / np.sqrt(2.0))
    if n_best >= 2:
        return max(scatter, robust_seed_spread(results, objective) / np.sqrt(n_best))
    return scatter


def evaluation_noise(results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE):
    """The evaluation's own noise of one fit's objective near the best lambda, or None.

    The root mean square of ``<objective>_se`` over the usable fits of the lambda with the best
    mean objective (over all usable fits when those have none). None when the table has no
    finite ``<objective>_se`` (studies before the evaluation reported its noise).
    """
    col = f"{objective}_se"
    if col not in results.columns:
        return None
    df = _usable(results, objective)
    se = pd.to_numeric(df[col], errors="coerce").to_numpy(float) if len(df) else np.zeros(0)
    ok = np.isfinite(se)
    if not ok.any():
        return None
    groups = _lam_groups(df["lam"].to_numpy(float))
    means = _group_means(df[objective].to_numpy(float), groups)
    at_best = (groups == groups[int(np.argmin(means))]) & ok
    pick = se[at_best] if at_best.any() else se[ok]
    return float(np.sqrt(np.mean(pick**2)))


def lambda_scores(results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE) -> pd.DataFrame:
    """Each lambda's score, counting its failures.

    A lambda is judged by all its fits, not only the ones that survived: every bad fit (any
    ``bad_reason``, and every fit without a finite objective) counts as
    :data:`raysearch.verdicts.BAD_SCORE` (1: chance level), so
    ``score = (sum of the usable fits' objectives + n_bad * BAD_SCORE) / n_fits``.

    Returns
    -------
    DataFrame, one row per distinct positive-or-zero lambda in increasing order: ``lam``,
    ``n_fits``, ``n_bad`` (fits that are not usable), ``share_bad``, ``mean`` (over the usable
    fits; NaN without one) and ``score``.
    """
    _check_columns(results, ["lam", "bad", objective])
    lam = pd.to_numeric(results["lam"], errors="coerce").to_numpy(float)
    keep = np.isfinite(lam) & (lam >= 0)
    if not keep.any():
        return pd.DataFrame(
            {"lam": [], "n_fits": [], "n_bad": [], "share_bad": [], "mean": [], "score": []}
        )
    use = verdicts.usable_mask(results, objective)[keep]
    obj = pd.to_numeric(results[objective], errors="coerce").to_numpy(float)[keep]
    lam = lam[keep]
    groups = _lam_groups(lam)
    n = np.bincount(groups)
    n_use = np.bincount(groups, weights=use.astype(float))
    s_use = np.bincount(groups, weights=np.where(use, obj, 0.0))
    n_bad = n - n_use
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_use > 0, s_use / np.maximum(n_use, 1), np.nan)
    return pd.DataFrame(
        {
            "lam": np.bincount(groups, weights=lam) / n,
            "n_fits": n,
            "n_bad": n_bad.astype(int),
            "share_bad": n_bad / n,
            "mean": mean,
            "score": (s_use + n_bad * BAD_SCORE) / n,
        }
    )


def robust_seed_spread(results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE) -> float:
    """Seed-to-seed standard deviation of the objective, robust to a freak fit.

    Over the lambdas with at least two usable fits, the median of their sample variances
    ``s_g^2`` (ddof=1), made consistent for normal noise: ``s_g^2 ~ sigma^2 chi2_nu / nu`` with
    ``nu = n_g - 1`` (the median ``nu`` when the lambdas have different numbers of fits), so
    ``sigma = sqrt(median(s_g^2) / (median(chi2_nu) / nu))``; with two seeds per lambda this is
    ``1.4826 * median_g |a_g - b_g| / sqrt(2)``. Returns 0.0 without any repeated lambda.
    """
    from scipy import stats

    _check_columns(results, ["lam", "bad", objective])
    df = _usable(results, objective)
    if len(df) < 2:
        return 0.0
    groups = _lam_groups(df["lam"].to_numpy(float))
    obj = df[objective].to_numpy(float)
    var, dof = [], []
    for g in np.unique(groups):
        v = obj[groups == g]
        if len(v) >= 2:
            var.append(float(np.var(v, ddof=1)))
            dof.append(len(v) - 1)
    if not var:
        return 0.0
    nu = float(np.median(dof))
    return float(np.sqrt(np.median(var) / (stats.chi2.median(nu) / nu)))


def default_tolerance(
    results: pd.DataFrame, objective: str = DEFAULT_OBJECTIVE, confidence: float = 0.95
) -> float:
    """The rule's default tolerance: ``subset_constant(K, confidence) * sqrt(2) * mean_noise``.

    ``K`` is the number of lambdas with a usable fit. Lambdas whose mean objective is within it of
    the best lambda's cannot be told apart from the best at that confidence (Gupta's subset
    selection, see :func:`subset_constant`); the rule then takes the sparsest of them.
    """
    k = len(lambda_means(results, objective))
    if k < 2:
        return 0.0
    return float(subset_constant(k, confidence) * np.sqrt(2.0) * mean_noise(results, objective))


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
    tolerance_source : "95% subset of the best" (the default, :func:`default_tolerance`, with
        the confidence used), "seed spread" or "given".
    candidates : the good fits at the lambdas within tolerance, in the order the rule ranks
        them, with column ``lam_objective`` (their lambda's mean objective).
    n_fits, n_bad : number of fits in the table and how many were bad or unusable.
    n_empty : how many of the unusable fits were empty (no weight above threshold, not flagged bad).
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
    n_empty: int = 0
    message: str = ""

    def to_frame(self) -> pd.DataFrame:
        """The recommended, best-objective and runner-up fits as one small DataFrame."""
        rows = []
        for role, r in (
            ("recommended", self.row),
            ("best objective", self.best_row),
            ("runner-up", self.runner_up),
        ):
            if r is not None:
                d = r.to_dict()
                d["role"] = role
                rows.append(d)
        out = pd.DataFrame(rows)
        if len(out):
            out = out[["role"] + [c for c in out.columns if c != "role"]]
        out.attrs.update(
            rule=self.rule,
            objective=self.objective,
            tolerance=self.tolerance,
            tolerance_source=self.tolerance_source,
        )
        return out


def recommend(
    results: pd.DataFrame,
    objective: str = DEFAULT_OBJECTIVE,
    rule: str = "sparsest",
    tolerance: float | None = None,
    sparsity_by: str = "lam",
    confidence: float = 0.95,
) -> Recommendation:
    """Recommend a lambda and a model from a results table.

    ``rule="sparsest"`` (default): each lambda is scored by the mean objective of all its fits
    (over seeds; a single fit is its own mean), every bad or unusable fit counting as
    :data:`raysearch.verdicts.BAD_SCORE` (:func:`lambda_scores`), and lambdas with more than
    :data:`MAX_BAD_SHARE` bad fits are left out. The lambdas whose score is at most
    ``best score + tolerance`` are the candidates (default tolerance: :func:`default_tolerance`, the lambdas that cannot be told apart
    from the best at ``confidence``), and the sparsest of their fits is returned: the largest lambda
    (``sparsity_by="lam"``) or the lowest weight density (``sparsity_by="weight_density"``);
    ties go to the lower objective (so at the chosen lambda, its best seed). ``rule="best"``
    returns the fit with the lowest objective.

    Parameters
    ----------
    results : DataFrame, one row per trial, with columns ``lam``, ``bad``, ``objective`` (and
        ``weight_density`` when ``sparsity_by="weight_density"``).
    objective : "mean_nrmse" or "max_nrmse" (any numeric column is accepted).
    rule : "sparsest" or "best".
    tolerance : absolute tolerance on the objective; None = :func:`default_tolerance` (the
        lambdas that cannot be told apart from the best at ``confidence``); ``"seed-spread"`` =
        :func:`seed_spread` (issue 7's first proposal, kept selectable: on the synthetic grid
        study it stopped at the weak end of the nRMSE plateau on half the draws).
    sparsity_by : "lam" or "weight_density".
    confidence : confidence level of the default tolerance (ignored when ``tolerance`` is given).

    Returns
    -------
    Recommendation
    """
    if rule not in RULES:
        raise ConfigError(f"unknown selection rule {rule!r}; use one of {RULES}")
    if sparsity_by not in SPARSITY_BY:
        raise ConfigError(f"unknown sparsity measure {sparsity_by!r}; use one of {SPARSITY_BY}")
    by_spread = isinstance(tolerance, str) and tolerance == "seed-spread"
    if isinstance(tolerance, str) and not by_spread:
        raise ConfigError(f"tolerance must be a number >= 0 or 'seed-spread', got {tolerance!r}")
    if tolerance is not None and not by_spread and not (np.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    default_source = f"{confidence:.0%} subset of the best"
    needed = ["lam", "bad", objective] + (
        ["weight_density"] if sparsity_by == "weight_density" else []
    )
    _check_columns(results, needed)

    if by_spread:
        tolerance = seed_spread(results, objective)
    good = _usable(results, objective)
    n_fits = len(results)
    n_bad = n_fits - len(good)
    n_empty = int((_empty(results) & ~results["bad"].fillna(True).astype(bool).to_numpy()).sum())
    unusable = f"{n_bad} of {n_fits} fits bad or unusable" + (
        f" ({n_empty} empty: no weight above threshold)" if n_empty else ""
    )
    if sparsity_by == "weight_density":
        wd = pd.to_numeric(good["weight_density"], errors="coerce").astype(float)
        good = good.loc[np.isfinite(wd)].copy()
        good["weight_density"] = wd[np.isfinite(wd)]
    if len(good) == 0:
        return Recommendation(
            lam=None,
            row=None,
            best_row=None,
            runner_up=None,
            rule=rule,
            objective=objective,
            sparsity_by=sparsity_by,
            tolerance=float(tolerance or 0.0),
            tolerance_source=("seed spread" if by_spread else "given")
            if tolerance is not None
            else default_source,
            candidates=good,
            n_fits=n_fits,
            n_bad=n_bad,
            n_empty=n_empty,
            message=f"no usable fit: all {n_fits} fits are bad, empty or have no finite "
            f"{objective}",
        )

    best_row = good.loc[verdicts.best_index(good, objective)]
    if tolerance is None:
        tol, source = default_tolerance(results, objective, confidence), default_source
        if tol == 0.0 and rule == "sparsest":
            # nothing to estimate the noise from: say so, rather than print a bare 0
            source += (
                f"; no noise estimate (one fit per lambda and fewer than "
                f"{MIN_LAMBDAS_FOR_SCATTER} lambdas, or a single lambda): the best "
                f"objective"
            )
    else:
        tol, source = float(tolerance), "seed spread" if by_spread else "given"

    if rule == "best":
        ranked = good.sort_values([objective, "lam"], ascending=[True, False], kind="stable")
        cands = ranked.iloc[:1]
    else:
        # A lambda is judged by its mean objective over its good fits (its seeds): the minimum of
        # many noisy single fits is biased low, the mean of each lambda is not. Without repeats
        # (continuous searches) the mean of a lambda is its single fit.
        # Failures count (issue 12.5): a lambda's score is over all its fits, every bad one
        # counting as chance (lambda_scores), and a lambda where most fits failed is never a
        # candidate (MAX_BAD_SHARE).
        good = good.copy()
        scores = lambda_scores(results, objective)
        pos = [
            int(
                np.argmin(
                    np.abs(np.log(scores["lam"].to_numpy(float) + 1e-300) - np.log(x + 1e-300))
                )
            )
            for x in good["lam"].to_numpy(float)
        ]
        good["lam_objective"] = scores["score"].to_numpy(float)[pos]
        good["lam_share_bad"] = scores["share_bad"].to_numpy(float)[pos]
        eligible = good["lam_share_bad"].to_numpy(float) <= MAX_BAD_SHARE
        if not eligible.any():
            source += f"; every lambda has more than {MAX_BAD_SHARE:.0%} bad fits"
            eligible[:] = True
        best_mean = float(good.loc[eligible, "lam_objective"].min())
        # within the tolerance, counting values that differ from the limit only by rounding
        limit = best_mean + tol
        cands = good.loc[
            eligible
            & (good["lam_objective"].to_numpy(float) <= limit + 1e-12 * max(1.0, abs(limit)))
        ]
        if sparsity_by == "lam":
            ranked = cands.sort_values(["lam", objective], ascending=[False, True], kind="stable")
        else:
            ranked = cands.sort_values(
                ["weight_density", objective], ascending=[True, True], kind="stable"
            )
        cands = ranked
    row = ranked.iloc[0]
    # Runner-up: the next candidate at another lambda, else the next candidate, else the best
    # remaining good fit outside the tolerance.
    pool = ranked.iloc[1:] if rule == "sparsest" else good.iloc[0:0]
    rest = good.drop(index=row.name).sort_values(objective, kind="stable")
    other = pool.loc[~np.isclose(pool["lam"].to_numpy(float), float(row["lam"]), rtol=1e-9, atol=0)]
    runner = next((p.iloc[0] for p in (other, pool, rest) if len(p)), None)

    what = "largest lambda" if sparsity_by == "lam" else "lowest weight density"
    if rule == "sparsest":
        n_lam = len(np.unique(_lam_groups(cands["lam"].to_numpy(float))))
        msg = (
            f"lambda = {row['lam']:.4g}: the {what} among {len(cands)} good fit(s) at "
            f"{n_lam} lambda(s) whose score (mean {objective} over seeds, a bad fit counting "
            f"{BAD_SCORE:g}) is <= the best lambda's {best_mean:.4g} + tolerance {tol:.3g} "
            f"({source}); {unusable}"
        )
    else:
        msg = f"lambda = {row['lam']:.4g}: lowest {objective} ({row[objective]:.4g}); {unusable}"
    return Recommendation(
        lam=float(row["lam"]),
        row=row,
        best_row=best_row,
        runner_up=runner,
        rule=rule,
        objective=objective,
        sparsity_by=sparsity_by,
        tolerance=tol,
        tolerance_source=source,
        candidates=cands,
        n_fits=n_fits,
        n_bad=n_bad,
        n_empty=n_empty,
        message=msg,
    )


def selection_summary(
    results: pd.DataFrame,
    objective: str = DEFAULT_OBJECTIVE,
    rule: str = "sparsest",
    tolerance: float | None = None,
    sparsity_by: str = "lam",
    n_bins: int | None = None,
    confidence: float = 0.95,
) -> tuple[Recommendation, pd.DataFrame]:
    """The recommendation and the per-bin bad-share table, as shown after ``raysearch results``."""
    return (
        recommend(
            results,
            objective=objective,
            rule=rule,
            tolerance=tolerance,
            sparsity_by=sparsity_by,
            confidence=confidence,
        ),
        bad_share_by_lambda(results, n_bins=n_bins),
    )


_study_objective = verdicts.study_objective


def select_model(
    results,
    objective: str | None = None,
    rule: str = "sparsest",
    tolerance: float | None = None,
    sparsity_by: str = "lam",
    n_bins: int | None = None,
    confidence: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The recommended model and the bad-share table of a study, as DataFrames.

    A companion of :func:`raysearch.load_results`: only trials that finished (their model file was
    written after the final evaluation) are considered; a table without a ``finished`` column is
    taken as it is.

    Parameters
    ----------
    results : DataFrame
        The DataFrame of ``load_results`` for a study (a path is refused: the selection stage
        does not read files; ``select_model(load_results(DIR))``).
    objective : {"mean_nrmse", "max_nrmse", "max_criteria"}, optional
        Default: the study's ``search.objective`` (``max_nrmse`` when unknown).
    rule, tolerance, sparsity_by, confidence : see :func:`recommend`.
    n_bins : see :func:`bad_share_by_lambda`.

    Returns
    -------
    recommendation : DataFrame
        Up to three rows (``role`` = "recommended", "best objective", "runner-up") with the
        results columns; empty when no fit is usable. ``attrs`` hold ``rule``, ``objective``,
        ``tolerance``, ``tolerance_source`` and ``message``.
    bins : DataFrame
        :func:`bad_share_by_lambda` over the finished trials.
    """
    if not isinstance(results, pd.DataFrame):
        raise InputError(
            "select_model takes the DataFrame of raysearch.load_results(DIR), "
            f"not {type(results).__name__}: select_model(load_results(DIR))"
        )
    df = results
    objective = objective or _study_objective(df)
    if objective not in OBJECTIVES and objective not in df.columns:
        raise ConfigError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    done = df[verdicts.finished_mask(df)]
    if len(done) == 0:
        raise InputError(
            "no finished trial in the results: nothing to select from (wait for "
            "trials to finish or resume the study)"
        )
    rec = recommend(
        done,
        objective=objective,
        rule=rule,
        tolerance=tolerance,
        sparsity_by=sparsity_by,
        confidence=confidence,
    )
    frame = rec.to_frame()
    frame.attrs["message"] = rec.message
    frame.attrs["n_fits"] = rec.n_fits
    frame.attrs["n_bad"] = rec.n_bad
    return frame, bad_share_by_lambda(done, n_bins=n_bins)


# --- data for the report's "Model selection" section (drawing: raysearch.plots) -------------------


@dataclass
class SelectionData:
    """What the report's model-selection section shows (data only).

    Attributes
    ----------
    recommendation : DataFrame
        :func:`select_model`'s first table (roles recommended / best objective / runner-up).
    bins : DataFrame
        :func:`bad_share_by_lambda` of the finished trials.
    radar : DataFrame
        One row per shown model (``role`` = "recommended", "best objective" (or one row
        "recommended = best objective" when they are the same fit), "bad" or "worst (none bad)"),
        with ``trial_id``, ``lam`` and the five nRMSE columns (raw values).
    hist_bins : DataFrame
        The lambda groups of the histograms: ``label``, ``lam_low``, ``lam_high``, ``n_models``.
    weight_edges : ndarray, shape (B + 1,)
        Bin edges of the weight histograms.
    weight_hist : ndarray, shape (G, B)
        Density of the weights ``w_{mu i}`` of all models of each lambda group.
    coupling_edges : ndarray, shape (B + 1,)
    coupling_hist : ndarray, shape (G, B)
        Density of the couplings ``J_ij`` on a fixed seeded sample of neuron pairs (the same pairs
        for every model with the same number of visible units).
    n_pairs : int
        Pairs sampled per model.
    notes : list of str
    """

    recommendation: pd.DataFrame
    bins: pd.DataFrame
    radar: pd.DataFrame
    hist_bins: pd.DataFrame
    weight_edges: np.ndarray
    weight_hist: np.ndarray
    coupling_edges: np.ndarray
    coupling_hist: np.ndarray
    n_pairs: int
    notes: list = field(default_factory=list)


def sample_pairs(n_units: int, n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed seeded sample of distinct neuron pairs ``i < j`` (all pairs when there are fewer).

    Depends only on ``(n_units, n_pairs, seed)``, so every model of a recording is compared on
    the same pairs. Pairs are drawn uniformly with replacement of the pair index (duplicates
    removed); memory is O(n_pairs), never O(n_units^2).

    Returns
    -------
    (i, j) : int64 arrays of equal length <= n_pairs
    """
    total = n_units * (n_units - 1) // 2
    if total <= n_pairs:
        i, j = np.triu_indices(n_units, k=1)
        return i.astype(np.int64), j.astype(np.int64)
    rng = np.random.default_rng([int(seed), int(n_units), 0x5E1])
    i = rng.integers(0, n_units, size=n_pairs)
    j = rng.integers(0, n_units - 1, size=n_pairs)
    j = j + (j >= i)  # j != i, uniform over the others
    a, b = np.minimum(i, j), np.maximum(i, j)
    key = np.unique(a * n_units + b)
    return (key // n_units).astype(np.int64), (key % n_units).astype(np.int64)


def pair_couplings(weights, hidden_var, i, j) -> np.ndarray:
    """``J_ij`` for the given pairs: :func:`raysearch.analysis.couplings.pair_couplings`."""
    from raysearch.analysis.couplings import pair_couplings as _pairs

    return _pairs(weights, hidden_var, i, j)


def _radar_rows(done: pd.DataFrame, rec: pd.DataFrame, objective: str) -> pd.DataFrame:
    rows = []
    by_role = rec.set_index("role") if len(rec) else None
    for role in ("recommended", "best objective"):
        if by_role is not None and role in by_role.index:
            r = by_role.loc[role]
            if rows and rows[0]["trial_id"] == r["trial_id"]:
                rows[0]["role"] = "recommended = best objective"
                continue
            rows.append(
                {
                    "role": role,
                    "trial_id": r["trial_id"],
                    "lam": float(r["lam"]),
                    **{c: float(r[c]) for c in NRMSE_COLUMNS},
                }
            )
    vals = done[list(NRMSE_COLUMNS)].apply(pd.to_numeric, errors="coerce").astype(float)
    finite = np.isfinite(vals.to_numpy()).all(axis=1)
    bad = verdicts.bad_mask(done)
    # the objective of a bad fit is inf: rank the bad ones by their worst nRMSE instead
    obj = np.where(
        bad,
        vals.max(axis=1, skipna=True).to_numpy(float),
        pd.to_numeric(done[objective], errors="coerce").to_numpy(float),
    )
    pick, role = None, "bad"
    if bad.any():
        # a bad fit is shown whenever there is one: the one with the most finite statistics (an
        # unassessable or undefined one is NaN and leaves a gap in its polygon), worst first
        cand = np.flatnonzero(bad)
        n_finite = np.isfinite(vals.to_numpy()[cand]).sum(axis=1)
        cand = cand[n_finite == n_finite.max()]
        pick = cand[np.nanargmax(obj[cand])] if np.isfinite(obj[cand]).any() else cand[0]
    elif finite.any():
        cand = np.flatnonzero(finite)
        pick, role = (
            cand[np.nanargmax(np.where(np.isfinite(obj[cand]), obj[cand], -np.inf))],
            "worst (none bad)",
        )
    if pick is not None:
        r = done.iloc[int(pick)]
        if not any(x["trial_id"] == r["trial_id"] for x in rows):
            rows.append(
                {
                    "role": role,
                    "trial_id": r["trial_id"],
                    "lam": float(r["lam"]),
                    **{c: float(vals.iloc[int(pick)][c]) for c in NRMSE_COLUMNS},
                }
            )
    return pd.DataFrame(rows, columns=["role", "trial_id", "lam", *NRMSE_COLUMNS])


def _hist_groups(lam: np.ndarray, max_groups: int) -> np.ndarray:
    distinct = np.unique(lam[_first_of_groups(lam)])
    return lambda_bins(lam, n_bins=int(min(max_groups, len(distinct))))


def selection_data(
    results: pd.DataFrame,
    objective: str | None = None,
    rule: str = "sparsest",
    tolerance: float | None = None,
    max_groups: int = 4,
    n_pairs: int = 20_000,
    n_hist_bins: int = 60,
    seed: int = 0,
) -> SelectionData:
    """Everything the report's model-selection section needs, from finished trials' model files.

    Parameters
    ----------
    results : DataFrame
        Rows of ``load_results`` (or ``Analysis.results``) whose ``model_path`` files exist.
    objective, rule, tolerance : see :func:`select_model`.
    max_groups : int
        The histograms compare at most this many log-lambda groups.
    n_pairs : int
        Neuron pairs sampled per model for the coupling histograms (seeded by ``seed`` and N).
    n_hist_bins : int
        Bins of each histogram (shared edges across groups: symmetric around 0, to the largest
        magnitude seen).
    seed : int

    Returns
    -------
    SelectionData
    """
    from raysearch.analysis.io import ModelFiles, model_exists

    rec, bins = select_model(results, objective=objective, rule=rule, tolerance=tolerance)
    objective = rec.attrs.get("objective") or objective or _study_objective(results)
    done = results[verdicts.finished_mask(results)]
    radar = _radar_rows(done, rec, objective)
    notes = []
    lam = pd.to_numeric(done["lam"], errors="coerce").to_numpy(float)
    have = (
        done["model_path"].map(model_exists).to_numpy(bool)
        if "model_path" in done
        else np.zeros(len(done), bool)
    )
    keep = have & np.isfinite(lam) & (lam > 0)
    if not keep.any():
        raise InputError(
            "no finished trial with a readable model file and a positive lambda: "
            "no weight or coupling histograms"
        )
    edges = _hist_groups(lam[keep], max_groups)
    g_of = np.clip(np.searchsorted(edges, lam, side="right") - 1, 0, len(edges) - 2)
    files = ModelFiles(done["model_path"].where(keep, None).tolist())
    weights_by_group = [[] for _ in range(len(edges) - 1)]
    coup_by_group = [[] for _ in range(len(edges) - 1)]
    n_models = np.zeros(len(edges) - 1, int)
    pairs = {}
    for k in np.flatnonzero(keep):
        try:
            W, c = files[int(k)]
        except InputError as exc:
            notes.append(f"left out of the histograms: {exc}")
            continue
        N = W.shape[1]
        if N not in pairs:
            pairs[N] = sample_pairs(N, n_pairs, seed)
        g = g_of[k]
        weights_by_group[g].append(np.asarray(W, np.float64).ravel())
        coup_by_group[g].append(pair_couplings(W, c, *pairs[N]))
        n_models[g] += 1

    def hist(groups):
        vals = [np.concatenate(v) if v else np.zeros(0) for v in groups]
        big = max((np.abs(v).max() for v in vals if v.size), default=1.0) or 1.0
        e = np.linspace(-big, big, n_hist_bins + 1)
        h = np.zeros((len(vals), n_hist_bins))
        for gi, v in enumerate(vals):
            if v.size:
                h[gi], _ = np.histogram(v, bins=e, density=True)
        return e, h

    we, wh = hist(weights_by_group)
    ce, ch = hist(coup_by_group)
    hb = pd.DataFrame({"lam_low": edges[:-1], "lam_high": edges[1:], "n_models": n_models})
    hb.insert(0, "label", [f"lambda {lo:.2g}-{hi:.2g}" for lo, hi in zip(edges[:-1], edges[1:])])
    n_p = int(len(next(iter(pairs.values()))[0])) if pairs else 0
    return SelectionData(
        recommendation=rec,
        bins=bins,
        radar=radar,
        hist_bins=hb,
        weight_edges=we,
        weight_hist=wh,
        coupling_edges=ce,
        coupling_hist=ch,
        n_pairs=n_p,
        notes=notes,
    )
