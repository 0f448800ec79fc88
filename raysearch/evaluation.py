"""Held-out evaluation of a fitted cRBM: five statistics, nRMSE, reconstruction, the verdict.

::

    res = evaluate(model, dataset)             # defaults: 300 chains x 50 samples, 20 steps apart
    res.nrmse["vv"], res.max_nrmse, res.nllh, res.bad, res.bad_reason, res.unassessable
    json.dumps(res.to_dict())

Model samples come from ``n_chains`` independent chains, each started from a random training
frame, run for ``n_burnin`` block-Gibbs steps, then ``n_samples`` samples per chain saved
``n_between`` steps apart. Statistics (each a vector over its elements):

=====  ===========================================================================================
v      <v_i>
h      <h_mu>, with h = E[h|v] (on data: the model's E[h|v] of train / test frames)
vh     <v_i h_mu>; the model side adds lam * dPenalty/dw (l1: sign(w); l2l1: sign(w) sum_j|w_j mu|),
       pairs with w == 0 exactly are left out
vv     <v_i v_j> - <v_i><v_j>, i < j; when N(N-1)/2 > max_pairs, on all pairs among a fixed random
       subset of k units (k(k-1)/2 <= max_pairs), see :func:`pair_subset`
hh     <h_mu h_nu> - <h_mu><h_nu>, mu < nu
=====  ===========================================================================================

nRMSE = (RMSE_model - RMSE_opt)/(RMSE_shuf - RMSE_opt), with RMSE_model = RMSE(test, model),
RMSE_opt = RMSE(test, train), RMSE_shuf = RMSE(test, model) after independently permuting both
vectors. RMSE_shuf is taken in expectation over the permutations, in closed form: with both
vectors independently and uniformly permuted, each pair (test_pi(k), model_sigma(k)) is an
independent draw from each vector, so E[MSE_shuf] = var(test) + var(model) + (mean(test) -
mean(model))^2 and RMSE_shuf = sqrt(E[MSE_shuf]). For the long vectors of a real fish this is what
a single shuffle gives (the shuffled MSE concentrates on its mean); for short ones (h with a few
hidden units: M = 8 values) a single random shuffle moved the denominator so much that the same
model was flagged bad (h nRMSE 1.4) or not (-0.05) depending on the evaluation seed.

The evaluation's own noise
--------------------------
Every figure comes with its noise, from two delete-one-group jackknifes: over
:data:`N_BLOCKS` groups of model chains (the sampling noise of the model's statistics) and over
:data:`N_BLOCKS` contiguous blocks of test frames (the noise of the held-out data, contiguous so
that the frames' autocorrelation is inside a block). The two variances add:
``se^2 = se_chains^2 + se_test^2`` (``nrmse_se``, ``objective_se``). These are the margins of the
verdicts below: how far the same model, evaluated again with other chains and other held-out
frames of the same recording, could move each figure.

Unassessable statistics
-----------------------
A statistic that cannot inform is **unassessable** (``unassessable``: {stat: reason}); it gets no
nRMSE (NaN), and is left out of the objectives and of the bad rule:

* by construction: ``v`` of z-scored units (``dataset.transform == "zscore"``): the training
  means are 0 by construction, so the training frames carry no information on <v_i> to compare a
  model with;
* by the data (:func:`data_contrast`, from the train and test statistics alone, never the
  model's samples, so that a model cannot make a statistic unassessable by predicting it flat;
  for h, vh and hh these are the data seen through the model's E[h|v]; contrasts within float32
  rounding of the statistic count as none): the training frames must predict the
  test frames' statistic better than a constant does (``RMSE(test, mean(train)) > RMSE_opt``:
  there is element-wise information at all) and clearly better than the nRMSE's shuffled
  reference, ``RMSE_shuf(test, train) - RMSE_opt > Z_MARGIN * se`` with se the test-block
  jackknife of that contrast (it must stand out of the noise with which the held-out frames
  measure it). Otherwise the nRMSE's denominator is noise and the ratio says nothing (measured
  before: a nearly empty model had hh RMSE_opt 0.00298 against RMSE_shuf 0.00300 and nRMSE
  -6.5). This replaces a fixed 5% contrast threshold (``MIN_CONTRAST``). On the 300-neuron
  synthetic fish (1,050 train / 450 test frames): spikes vv contrast 0.0024 against 3 x 0.00028
  (assessable); z-scored dF/F vv: the training frames predict it worse than a constant
  (-0.0077): unassessable for every model;
* a statistic without elements (``vh`` of a model whose weights are all exactly 0).

The verdict (:func:`raysearch.verdicts.verdict`)
------------------------------------------------
``bad_reason`` is ``diverged`` (non-finite parameters or the trainer's flag), ``unstable`` (the
parameters prove a Gaussian-dReLU model not normalisable, :mod:`raysearch.stability`: it is then
not sampled; or model chains non-finite, or max |v| over the chains above :data:`UNSTABLE_FACTOR`
times the largest |v| of the training frames; chains run at least
:data:`UNDETERMINED_MIN_STEPS` Gibbs steps when the parameter checks cannot decide), ``empty``
(``weight_density == 0``), ``no_better_than_chance`` (an assessable statistic whose
``nRMSE + Z_MARGIN * se`` is not below 1: with RMSE_shuf in closed form a useless model lands
just below 1, so the plain "nRMSE > 1" rule almost never fires; the margin makes it fire when
the nRMSE cannot be told from chance by this evaluation), or ``undefined``. The
objectives of a bad fit are reported as ``inf``.

Reconstruction (the paper's sixth criterion)
--------------------------------------------
``nllh``: on the held-out frames, with h = E[h|v(t)], Bernoulli visibles:
``LLH = mean_t sum_i log P(v_i(t) | h)``, ``LLH_indep`` the same under independent units with the
training means <v_i> (clipped to [1/(2 T_train), 1 - 1/(2 T_train)]), and
``nllh = (LLH - LLH_indep)/(-LLH_indep)``. Gaussian visibles: the normalised reconstruction error
``nllh = 1 - sum (v - E[v|h])^2 / sum (v - <v>_train)^2``. Both: 1 = perfect reconstruction,
0 = the independent baseline, < 0 worse than it. ``max_criteria = max(max_nrmse, 1 - nllh)``.

Weight sparsity and convergence (over all M x N weights; NaN for non-finite weights):

* ``weight_density``: fraction of weights with |w| > 0.01 (the paper's assembly-size measure:
  mean assembly size = weight_density * N);
* ``sparsity``: fraction of weights that are negligible relative to their hidden unit,
  |w_{mu i}| <= 0.01 * max_i |w_{mu i}| (scale-free; 1 - the relative density);
* ``weight_std``: std(w), and ``weights_converged``: 0.01 < std(w) < 0.1 (the reference's check).

Sums are accumulated on the backend (float32, centred on the training means to avoid cancellation),
and only the small moment arrays come back to the host.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysearch import verdicts
from raysearch.backend import get_backend
from raysearch.crbm import training, units
from raysearch.errors import ConfigError, InputError
from raysearch.verdicts import STATS, Z_MARGIN

__all__ = [
    "STATS",
    "EvaluationResult",
    "evaluate",
    "evaluate_joint",
    "joint_metrics",
    "per_fish_metrics",
    "nrmse",
    "nrmse_from_rmse",
    "rmse",
    "shuffled_rmse",
    "data_contrast",
    "jackknife_se",
    "pair_subset",
    "is_bad",
    "weight_sparsity",
    "weight_convergence",
    "reconstruction_score",
    "N_BLOCKS",
    "UNSTABLE_FACTOR",
    "Z_MARGIN",
]

_EVAL_STREAM = 7_001  # rng stream id of evaluation draws (trainer streams differ)
_CHUNK = 1024  # data frames per backend chunk
#: Fewest Gibbs steps (burn-in + sampling) of the evaluation chains of a Gaussian model whose
#: normalisability the parameter checks cannot decide (raysearch.stability): chains of
#: non-normalisable models fitted to a 2,000-neuron z-scored fish ran away only after
#: 1,200-1,700 steps, so 4,000 leaves a factor > 2.
UNDETERMINED_MIN_STEPS = 4000
#: Jackknife groups: of model chains, and of contiguous test-frame blocks (fewer when there are
#: fewer chains / frames). 10 groups give the standard error within about 25% (9 degrees of freedom).
N_BLOCKS = 10
#: Model chains are unstable when max |v| over them exceeds this many times the largest |v| of the
#: training frames (or 1, whichever is larger): a normalisable model fitted to the data does not
#: sample values an order of magnitude outside everything it was trained on, while a
#: non-normalisable Gaussian-dReLU model's chains grow without bound (|v| > 1e3 within ~1,500
#: steps on a z-scored fish, whose frames stay within |v| < ~30).
UNSTABLE_FACTOR = 10.0
#: Contrasts below this fraction of the statistic's RMS are float32 rounding, not information (a
#: statistic that is constant on every side, e.g. h of a model without weights).
_FLOAT_FLOOR = 1e-5
#: Burn-in steps between two checks of the chains' range (Gaussian visibles).
_CHECK_EVERY = 100


# --------------------------------------------------------------------------------------------
# Pure formulas
# --------------------------------------------------------------------------------------------
def rmse(a, b) -> float:
    """sqrt(mean((a - b)^2)) of two equal-length host vectors (NaN if empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def nrmse_from_rmse(rmse_model: float, rmse_opt: float, rmse_shuf: float) -> float:
    """(RMSE_model - RMSE_opt)/(RMSE_shuf - RMSE_opt); NaN when an input is non-finite or the
    denominator is not positive. (Whether the denominator is more than noise is the separate,
    data-driven question decided in :func:`evaluate`.)"""
    den = rmse_shuf - rmse_opt
    if (
        not (math.isfinite(rmse_model) and math.isfinite(rmse_opt) and math.isfinite(rmse_shuf))
        or not den > 0
    ):
        return float("nan")
    return (rmse_model - rmse_opt) / den


def shuffled_rmse(a, b) -> float:
    """RMSE between ``a`` and ``b`` after independent uniform random permutations of both, in
    expectation over the permutations: sqrt(var(a) + var(b) + (mean(a) - mean(b))^2).

    Parameters
    ----------
    a, b : array (K,)
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size == 0:
        return float("nan")
    return math.sqrt(float(a.var() + b.var() + (a.mean() - b.mean()) ** 2))


def nrmse(s_test, s_model, s_train) -> tuple[float, float, float, float]:
    """Normalised RMSE of one statistic.

    Parameters
    ----------
    s_test, s_model, s_train : array (K,)
        The statistic's elements on test data, model samples and training data. RMSE_shuf is
        :func:`shuffled_rmse` of ``s_test`` and ``s_model`` (deterministic).

    Returns
    -------
    (nrmse, rmse_model, rmse_opt, rmse_shuf) : floats
    """
    s_test = np.asarray(s_test, dtype=np.float64).ravel()
    s_model = np.asarray(s_model, dtype=np.float64).ravel()
    s_train = np.asarray(s_train, dtype=np.float64).ravel()
    if not (s_test.shape == s_model.shape == s_train.shape):
        raise ValueError(
            f"statistic vectors differ in length: test {s_test.shape}, "
            f"model {s_model.shape}, train {s_train.shape}"
        )
    r_model = rmse(s_test, s_model)
    r_opt = rmse(s_test, s_train)
    r_shuf = shuffled_rmse(s_test, s_model)
    return nrmse_from_rmse(r_model, r_opt, r_shuf), r_model, r_opt, r_shuf


def data_contrast(s_test, s_train) -> tuple[float, float]:
    """How much better the training frames predict the test frames' statistic than chance.

    Returns
    -------
    (flat, shuffled) : ``RMSE(test, mean(train)) - RMSE(test, train)`` (better than a constant?)
    and ``RMSE_shuf(test, train) - RMSE(test, train)`` (better than the shuffled reference of
    the nRMSE, applied to the training frames' own statistic). NaN for empty vectors.
    """
    t = np.asarray(s_test, dtype=np.float64).ravel()
    tr = np.asarray(s_train, dtype=np.float64).ravel()
    if t.size == 0:
        return float("nan"), float("nan")
    opt = rmse(t, tr)
    return rmse(t, np.full_like(t, tr.mean())) - opt, shuffled_rmse(t, tr) - opt


def jackknife_se(replicates) -> float:
    """Delete-one-group jackknife standard error: sqrt((G-1)/G sum_g (x_g - mean x)^2).

    Parameters
    ----------
    replicates : array (G,), the estimate with group g left out. Non-finite replicates make the
        error ``inf``; fewer than two groups give 0 (no estimate of the noise).
    """
    x = np.asarray(replicates, dtype=np.float64).ravel()
    if x.size < 2:
        return 0.0
    if not np.all(np.isfinite(x)):
        return float("inf")
    g = x.size
    return float(np.sqrt((g - 1) / g * np.sum((x - x.mean()) ** 2)))


def is_bad(
    nrmse_dict: dict, params_finite: bool, nrmse_upper: dict | None = None, unassessable=()
) -> bool:
    """The bad flag of :func:`raysearch.verdicts.verdict` from nRMSEs alone (no noise given: the
    upper bounds are the nRMSEs themselves)."""
    return verdicts.verdict(
        nrmse_dict, nrmse_upper or nrmse_dict, unassessable, params_finite=params_finite
    )[0]


def _pair_units(n_units: int, max_pairs: int, seed: int):
    if n_units * (n_units - 1) // 2 <= max_pairs:
        return None
    k = int((1 + math.isqrt(1 + 8 * max_pairs)) // 2)  # k(k-1)/2 <= max_pairs
    while k * (k - 1) // 2 > max_pairs:
        k -= 1
    k = max(k, 2)
    rng = np.random.default_rng([int(seed), 0x7A1B5])
    return np.sort(rng.choice(n_units, size=k, replace=False))


def pair_subset(n_units: int, max_pairs: int = 1_000_000, seed: int = 0):
    """Pairs (i < j) of units on which ``vv`` is compared; depends only on the arguments.

    All pairs when ``N(N-1)/2 <= max_pairs``; otherwise all pairs among a seeded random subset of
    k units, k the largest with ``k(k-1)/2 <= max_pairs``. Every pair is equally likely to be in
    the subset, and the covariance on it is a dense k x k product (fast on CPU and GPU).

    Returns
    -------
    (i, j) : int64 arrays, i < j, in row-major upper-triangle order
    """
    if n_units < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if max_pairs < 1:
        raise ConfigError(f"max_pairs must be >= 1, got {max_pairs}")
    units_ = _pair_units(n_units, max_pairs, seed)
    if units_ is None:
        i, j = np.triu_indices(n_units, k=1)
        return i.astype(np.int64), j.astype(np.int64)
    a, b = np.triu_indices(units_.size, k=1)
    return units_[a].astype(np.int64), units_[b].astype(np.int64)


def weight_sparsity(weights) -> tuple[float, float]:
    """(sparsity, weight_density) of a (M, N) weight matrix; see the module docstring."""
    w = np.abs(np.asarray(weights, dtype=np.float64))
    if w.size == 0 or not np.all(np.isfinite(w)):
        return float("nan"), float("nan")
    density = float(np.mean(w > 0.01))
    rel = w <= 0.01 * w.max(axis=1, keepdims=True)
    return float(np.mean(rel)), density


def weight_convergence(weights) -> tuple[float, bool]:
    """(std(w), lo < std(w) < hi) with (lo, hi) = :data:`raysearch.verdicts.WEIGHT_STD_RANGE`."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or not np.all(np.isfinite(w)):
        return float("nan"), False
    sd = float(w.std())
    lo, hi = verdicts.WEIGHT_STD_RANGE
    return sd, bool(lo < sd < hi)


def reconstruction_score(llh_model: float, llh_indep: float) -> float:
    """Normalised reconstruction score ``(L - L_indep)/(-L_indep)`` of two summed
    log-likelihoods (Bernoulli) or ``1 - E/E_indep`` of two summed squared errors passed as
    ``-E`` and ``-E_indep`` (Gaussian): 1 = perfect, 0 = independent baseline. NaN when the
    baseline is 0 or a figure is non-finite."""
    if not (math.isfinite(llh_model) and math.isfinite(llh_indep)) or not llh_indep < 0:
        return float("nan")
    return (llh_model - llh_indep) / (-llh_indep)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`. ``stats`` holds ``{stat: {"train", "test", "model"}}`` host
    vectors only when asked for (``return_stats=True``).

    The objectives (``mean_nrmse``, ``max_nrmse``, ``max_criteria``) are over the assessable
    statistics and are ``inf`` for a bad fit (:func:`raysearch.verdicts.reported_objective`);
    ``nrmse`` holds every statistic's value as computed (NaN where unassessable).
    ``unstable`` / ``unstable_reason`` say whether (and why) the model is not normalisable or its
    chains left the sane range; other checks (a bound on the parameters) may set them too.
    """

    nrmse: dict[str, float]
    rmse_model: dict[str, float]
    rmse_opt: dict[str, float]
    rmse_shuf: dict[str, float]
    mean_nrmse: float
    max_nrmse: float
    bad: bool
    sparsity: float
    weight_density: float
    params_finite: bool
    n_model_samples: int
    n_vv_pairs: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, dict[str, np.ndarray]] | None = None
    bad_reason: str = ""
    unstable: bool = False
    unstable_reason: str = ""
    unassessable: dict[str, str] = field(default_factory=dict)
    nrmse_se: dict[str, float] = field(default_factory=dict)
    nrmse_upper: dict[str, float] = field(default_factory=dict)
    nllh: float = float("nan")
    max_criteria: float = float("nan")
    objective_se: dict[str, float] = field(default_factory=dict)
    weight_std: float = float("nan")
    weights_converged: bool = False
    max_abs_v: float = float("nan")

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict of plain Python values (NaN possible for failed statistics)."""
        d: dict[str, Any] = {}
        for s in STATS:
            d[f"nrmse_{s}"] = float(self.nrmse[s])
        d["mean_nrmse"] = float(self.mean_nrmse)
        d["max_nrmse"] = float(self.max_nrmse)
        d["max_criteria"] = float(self.max_criteria)
        d[verdicts.RECONSTRUCTION] = float(self.nllh)
        for o in verdicts.OBJECTIVES:
            d[f"{o}_se"] = float(self.objective_se.get(o, float("nan")))
        d["bad"] = bool(self.bad)
        d["bad_reason"] = str(self.bad_reason)
        d["unstable"] = bool(self.unstable)
        d["unstable_reason"] = str(self.unstable_reason)
        d["unassessable"] = ",".join(s for s in STATS if s in self.unassessable)
        d["unassessable_reason"] = "; ".join(
            f"{s}: {self.unassessable[s]}" for s in STATS if s in self.unassessable
        )
        d["sparsity"] = float(self.sparsity)
        d["weight_density"] = float(self.weight_density)
        d["weight_std"] = float(self.weight_std)
        d["weights_converged"] = bool(self.weights_converged)
        d["params_finite"] = bool(self.params_finite)
        for name in ("rmse_model", "rmse_opt", "rmse_shuf"):
            for s in STATS:
                d[f"{name}_{s}"] = float(getattr(self, name)[s])
        for s in STATS:
            d[f"nrmse_se_{s}"] = float(self.nrmse_se.get(s, float("nan")))
        d["max_abs_v"] = float(self.max_abs_v)
        d["n_model_samples"] = int(self.n_model_samples)
        d["n_vv_pairs"] = int(self.n_vv_pairs)
        d["eval_seconds"] = float(self.seconds)
        d["unstable"] = bool(self.unstable)
        d["unstable_reason"] = str(self.unstable_reason)
        return d


# --------------------------------------------------------------------------------------------
# Moments accumulated on the backend
# --------------------------------------------------------------------------------------------
class _Moments:
    """Running sums of v, h, h^T v, (v_S - c)^T (v_S - c), (h - d)^T (h - d) on the backend."""

    def __init__(self, bk, n_visible, n_hidden, sub, v_shift, h_shift):
        xp = bk.xp
        self.bk, self.sub = bk, sub
        self.v_shift_sub = v_shift if sub is None else v_shift[sub]
        self.h_shift = h_shift
        n_sub = n_visible if sub is None else int(sub.shape[0])
        self.n = 0
        self.sv = xp.zeros(n_visible, dtype=xp.float32)
        self.sh = xp.zeros(n_hidden, dtype=xp.float32)
        self.svh = xp.zeros((n_hidden, n_visible), dtype=xp.float32)
        self.svv = xp.zeros((n_sub, n_sub), dtype=xp.float32)
        self.shh = xp.zeros((n_hidden, n_hidden), dtype=xp.float32)

    def add(self, v, h):
        self.n += int(v.shape[0])
        self.sv += v.sum(axis=0)
        self.sh += h.sum(axis=0)
        self.svh += h.T @ v
        vs = (v if self.sub is None else v[:, self.sub]) - self.v_shift_sub
        self.svv += vs.T @ vs
        hc = h - self.h_shift
        self.shh += hc.T @ hc

    def host(self) -> dict:
        """The sums on the host (float64), with ``n``."""
        g = lambda a: self.bk.to_numpy(a).astype(np.float64)  # noqa: E731
        return {
            "n": float(self.n),
            "sv": g(self.sv),
            "sh": g(self.sh),
            "svh": g(self.svh),
            "svv": g(self.svv),
            "shh": g(self.shh),
        }


def _add_sums(parts) -> dict:
    out = {k: (0.0 if k == "n" else np.zeros_like(v)) for k, v in parts[0].items()}
    for p in parts:
        for k in out:
            out[k] = out[k] + p[k]
    return out


def _sub_sums(total: dict, part: dict) -> dict:
    return {k: total[k] - part[k] for k in total}


def _vectors(sums: dict, sub, v_shift_sub, h_shift, vh_mask, vh_correction=None) -> dict:
    """Statistic vectors {v, h, vh, vv, hh} (float64, host) from host sums (:meth:`_Moments.host`).

    ``sub``: host indices of the vv unit subset or None; ``v_shift_sub``, ``h_shift``: the centres
    the quadratic sums were taken around (host)."""
    n = sums["n"]
    if not n > 0:
        nan = lambda a: np.full(a.shape, np.nan)  # noqa: E731
        mv, mh, mvh = nan(sums["sv"]), nan(sums["sh"]), nan(sums["svh"])
        cvv, chh = nan(sums["svv"]), nan(sums["shh"])
    else:
        mv, mh, mvh = sums["sv"] / n, sums["sh"] / n, sums["svh"] / n
        dv = (mv if sub is None else mv[sub]) - v_shift_sub
        cvv = sums["svv"] / n - np.outer(dv, dv)  # E[(v-c)(v-c)] - E[v-c]E[v-c] = Cov(v)
        dh = mh - h_shift
        chh = sums["shh"] / n - np.outer(dh, dh)
    iu = np.triu_indices(cvv.shape[0], k=1)
    ih = np.triu_indices(chh.shape[0], k=1)
    vh = mvh if vh_correction is None else mvh + vh_correction
    return {"v": mv, "h": mh, "vh": vh[vh_mask], "vv": cvv[iu], "hh": chh[ih]}


def _model_arrays(model):
    """Host float32 parameter arrays of a fitted model and whether they are all finite."""
    names = ["weights_", "fields_", "gamma_plus_", "gamma_minus_", "theta_plus_", "theta_minus_"]
    if getattr(model, "visible", "bernoulli") == "gaussian":
        names.append("gamma_")
    missing = [n for n in names if getattr(model, n, None) is None]
    if missing:
        raise InputError(
            f"evaluate: the model has no {', '.join(missing)}: fit it (or "
            "CRBM.load a model file) before evaluating"
        )
    arrs = {n: np.asarray(getattr(model, n), dtype=np.float32) for n in names}
    finite = all(np.all(np.isfinite(a)) for a in arrs.values())
    return arrs, finite


def _hidden_means(v, p, bk):
    return units.drelu_mean(units.hidden_inputs(v, p["W"]), *p["hidden"], bk)


def _data_moments(V_host, p, bk, sub, v_shift, h_shift, n_blocks=1):
    """Host sums of the frames of ``V_host`` in ``n_blocks`` contiguous blocks (a list)."""
    T, N = V_host.shape
    M = p["W"].shape[0]
    edges = np.linspace(0, T, n_blocks + 1).round().astype(int)
    out = []
    for b in range(n_blocks):
        acc = _Moments(bk, N, M, sub, v_shift, h_shift)
        for s in range(edges[b], edges[b + 1], _CHUNK):
            v = bk.asarray(V_host[s : min(s + _CHUNK, edges[b + 1])])
            acc.add(v, _hidden_means(v, p, bk))
        out.append(acc.host())
    return out


def _reconstruction_sums(V_host, p, visible, train_mean, n_train, bk, n_blocks):
    """Per contiguous block of frames: (model figure, independent figure), summed over frames
    and units: log-likelihoods (Bernoulli) or minus squared errors (Gaussian); see the module
    docstring. Returns an array (n_blocks, 2)."""
    T = V_host.shape[0]
    edges = np.linspace(0, T, n_blocks + 1).round().astype(int)
    out = np.zeros((n_blocks, 2))
    m = np.asarray(train_mean, dtype=np.float64)
    if visible == "bernoulli":
        eps = 0.5 / max(n_train, 1)
        q = np.clip(m, eps, 1.0 - eps)
        log_p, log_1p = (
            bk.asarray(np.log(q).astype(np.float32)),
            bk.asarray(np.log1p(-q).astype(np.float32)),
        )
    m_b = bk.asarray(m.astype(np.float32))
    xp = bk.xp
    for b in range(n_blocks):
        for s in range(edges[b], edges[b + 1], _CHUNK):
            v = bk.asarray(V_host[s : min(s + _CHUNK, edges[b + 1])])
            x = units.visible_inputs(_hidden_means(v, p, bk), p["W"])
            if visible == "bernoulli":
                x = x + p["g"]
                model = xp.sum(v * x - bk.logaddexp(0.0, x))
                indep = xp.sum(v * log_p + (1.0 - v) * log_1p)
            else:
                mu = units.gaussian_mean(x, p["g"], p["gamma"], bk)
                model = -xp.sum((v - mu) ** 2)
                indep = -xp.sum((v - m_b) ** 2)
            out[b, 0] += float(bk.to_numpy(model))
            out[b, 1] += float(bk.to_numpy(indep))
    return out


def _hidden_shift(V_host, p, bk):
    """Mean E[h|v] over the first chunk of frames: the centre for the hh sums (any value near
    the mean avoids cancellation; it does not change the statistic)."""
    v = bk.asarray(V_host[:_CHUNK])
    return _hidden_means(v, p, bk).mean(axis=0)


def _trainer_params(p, visible):
    """The evaluation's parameter dict in the trainer's layout, for :func:`training.gibbs` (the
    same sampler as the fit, with its compiled CPU path for Bernoulli visibles)."""
    out = {"weights": p["W"], "fields": p["g"], **dict(zip(training.HIDDEN_KEYS, p["hidden"]))}
    if visible == "gaussian":
        out["visible_gamma"] = p["gamma"]
    return out


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"evaluate: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _max_abs(v, bk) -> float:
    """max |v| of a backend array as a host float (NaN/inf when v has them)."""
    xp = bk.xp
    if not bool(bk.to_numpy(xp.all(xp.isfinite(v)))):
        return float("inf")
    return float(bk.to_numpy(xp.max(xp.abs(v)))) if v.size else 0.0


def _sample_model(
    tp,
    v,
    visible,
    bk,
    rng,
    WT,
    n_burnin,
    n_samples,
    n_between,
    groups,
    p,
    sub,
    v_shift,
    h_shift,
    bound,
):
    """Run the chains; return (host sums per chain group, max |v| seen, why unstable or "")."""
    N, M = p["W"].shape[1], p["W"].shape[0]
    accs = [_Moments(bk, N, M, sub, v_shift, h_shift) for _ in groups]
    gaussian = visible == "gaussian"
    seen = 0.0

    def check(v):
        nonlocal seen
        m = _max_abs(v, bk)
        seen = max(seen, m)
        if not math.isfinite(m):
            return "model chains became non-finite"
        if gaussian and m > bound:
            return (
                f"model chains left the sane range: max |v| {m:.3g} > {bound:.3g} "
                f"({UNSTABLE_FACTOR:g} x the largest |v| of the training frames)"
            )
        return ""

    with np.errstate(all="ignore"):  # a diverging model's chains may overflow: caught below
        # Gaussian chains are checked every _CHECK_EVERY burn-in steps (an exploding model stops
        # early); Bernoulli chains in one go (same draws either way)
        step = _CHECK_EVERY if gaussian else max(n_burnin, 1)
        done = 0
        while done < n_burnin:
            k = min(step, n_burnin - done)
            v = training.gibbs(tp, v, k, visible, bk, rng, WT)
            done += k
            why = check(v) if gaussian else ""
            if why:
                return [a.host() for a in accs], seen, why
        for _ in range(n_samples):
            v = training.gibbs(tp, v, n_between, visible, bk, rng, WT)
            why = check(v)
            if why:
                return [a.host() for a in accs], seen, why
            h = _hidden_means(v, p, bk)
            for a, sl in zip(accs, groups):
                a.add(v[sl], h[sl])
    return [a.host() for a in accs], seen, ""


def _parts(vec_test, vec_model, vec_train) -> dict:
    """{stat: (nrmse, rmse_model, rmse_opt, rmse_shuf)} of one set of statistic vectors."""
    return {s: nrmse(vec_test[s], vec_model[s], vec_train[s]) for s in STATS}


def evaluate(
    model,
    dataset,
    n_chains: int = 300,
    n_burnin: int = 2000,
    n_samples: int = 50,
    n_between: int = 20,
    seed: int = 0,
    max_pairs: int = 1_000_000,
    return_stats: bool = False,
    backend=None,
    pair_seed: int = 0,
) -> EvaluationResult:
    """Compare the model's statistics with held-out data and give the fit its verdict.

    Parameters
    ----------
    model : fitted CRBM (or any object with its learned attributes)
        Uses ``weights_`` (M, N), ``fields_`` (N,), ``gamma_plus_``, ``gamma_minus_``,
        ``theta_plus_``, ``theta_minus_`` (M,), ``visible``, ``penalty``, ``lam`` and, for
        gaussian visibles, ``gamma_`` (N,). A model with ``diverged_ = True`` is bad (diverged).
    dataset : Dataset
        Uses ``train`` (T_train, N), ``test`` (T_test, N) and, when present, ``transform``
        (``"zscore"``: ``v`` is unassessable by construction).
    n_chains, n_burnin, n_samples, n_between : int
        Model sampling: chains from random training frames, burn-in steps, samples per chain, Gibbs
        steps between saved samples. Smaller values give a cheaper, noisier evaluation (the noise
        is measured and widens the verdict's margins).
    seed : int
        Seeds chain starts and Gibbs draws (not the vv pair subset, which
        depends on ``(N, max_pairs, pair_seed)`` only, so it is identical for every model of a
        dataset).
    max_pairs : int
        Most ``vv`` pairs to compare (see :func:`pair_subset`).
    return_stats : bool
        Keep the statistic vectors (for identity plots) in ``result.stats``.
    backend : str or Backend, optional
        Default: the model's ``backend`` setting, else "auto".
    pair_seed : int
        Seed of the ``vv`` pair subset (:func:`pair_subset`); keep the default so that every model
        of a study is compared on the same pairs.

    Returns
    -------
    EvaluationResult
    """
    t0 = time.perf_counter()
    n_chains = _check_int("n_chains", n_chains, 1)
    n_burnin = _check_int("n_burnin", n_burnin, 0)
    n_samples = _check_int("n_samples", n_samples, 1)
    n_between = _check_int("n_between", n_between, 1)
    max_pairs = _check_int("max_pairs", max_pairs, 1)
    seed = _check_int("seed", seed, 0)
    train = getattr(dataset, "train", None)
    test = getattr(dataset, "test", None)
    if train is None or test is None:
        raise InputError(
            "evaluate: dataset must have .train and .test arrays (a raysearch Dataset)"
        )
    train = np.ascontiguousarray(train, dtype=np.float32)
    test = np.ascontiguousarray(test, dtype=np.float32)
    arrs, finite = _model_arrays(model)
    M, N = arrs["weights_"].shape
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != N or test.shape[1] != N:
        raise InputError(
            f"evaluate: the model has {N} visible units but the data are train "
            f"{train.shape}, test {test.shape}"
        )
    if train.shape[0] < 1 or test.shape[0] < 1:
        raise InputError("evaluate: train and test data must have at least one frame each")
    visible = getattr(model, "visible", "bernoulli")
    if visible not in ("bernoulli", "gaussian"):
        raise ConfigError(f"evaluate: unknown visible type {visible!r}")
    penalty = getattr(model, "penalty", "l2l1")
    if penalty not in ("l1", "l2l1"):
        raise ConfigError(f"evaluate: unknown penalty {penalty!r} (use 'l1' or 'l2l1')")
    lam = float(getattr(model, "lam", 0.0))
    diverged = bool(getattr(model, "diverged_", False))
    params_finite = finite and not diverged
    sparsity, density = weight_sparsity(arrs["weights_"])
    w_std, w_conv = weight_convergence(arrs["weights_"])
    settings = dict(
        n_chains=n_chains,
        n_burnin=n_burnin,
        n_samples=n_samples,
        n_between=n_between,
        seed=seed,
        max_pairs=max_pairs,
    )
    sub_host = _pair_units(N, max_pairs, _check_int("pair_seed", pair_seed, 0))
    n_pairs = (N * (N - 1) // 2) if sub_host is None else sub_host.size * (sub_host.size - 1) // 2
    nan = {s: float("nan") for s in STATS}
    inf_obj = {o: math.inf for o in verdicts.OBJECTIVES}

    if not finite:
        return EvaluationResult(
            nrmse=dict(nan),
            rmse_model=dict(nan),
            rmse_opt=dict(nan),
            rmse_shuf=dict(nan),
            mean_nrmse=math.inf,
            max_nrmse=math.inf,
            bad=True,
            sparsity=sparsity,
            weight_density=density,
            params_finite=params_finite,
            n_model_samples=0,
            n_vv_pairs=n_pairs,
            seconds=time.perf_counter() - t0,
            settings=settings,
            bad_reason="diverged",
            max_criteria=math.inf,
            objective_se=dict(inf_obj),
            nrmse_se=dict(nan),
            nrmse_upper=dict(nan),
            weight_std=w_std,
            weights_converged=w_conv,
        )
    # Gaussian visibles: a model that is not normalisable (raysearch.stability) has no statistics
    # to compare; its chains would only run away. Undetermined models get chains of at least
    # UNDETERMINED_MIN_STEPS Gibbs steps, long enough for a run-away to show.
    if visible == "gaussian":
        from raysearch.stability import check_stability

        stab = check_stability(
            arrs["weights_"], arrs["gamma_"], arrs["gamma_plus_"], arrs["gamma_minus_"]
        )
        settings["stability"] = stab.verdict
        settings["stability_margin"] = float(stab.margin)
        if stab.verdict == "unstable":
            return EvaluationResult(
                nrmse=dict(nan),
                rmse_model=dict(nan),
                rmse_opt=dict(nan),
                rmse_shuf=dict(nan),
                mean_nrmse=math.inf,
                max_nrmse=math.inf,
                bad=True,
                sparsity=sparsity,
                weight_density=density,
                params_finite=params_finite,
                n_model_samples=0,
                n_vv_pairs=n_pairs,
                seconds=time.perf_counter() - t0,
                settings=settings,
                bad_reason="diverged" if diverged else "unstable",
                unstable=True,
                unstable_reason=stab.reason,
                max_criteria=math.inf,
                objective_se=dict(inf_obj),
                nrmse_se=dict(nan),
                nrmse_upper=dict(nan),
                weight_std=w_std,
                weights_converged=w_conv,
            )
        if stab.verdict == "undetermined":
            n_burnin = max(n_burnin, UNDETERMINED_MIN_STEPS - n_samples * n_between)
            settings["n_burnin"] = n_burnin

    if backend is None:
        backend = getattr(model, "backend", "auto")
    bk = get_backend(backend)
    p = {
        "W": bk.asarray(arrs["weights_"]),
        "g": bk.asarray(arrs["fields_"]),
        "hidden": tuple(
            bk.asarray(arrs[k])
            for k in ("gamma_plus_", "gamma_minus_", "theta_plus_", "theta_minus_")
        ),
    }
    if visible == "gaussian":
        p["gamma"] = bk.asarray(arrs["gamma_"])
    sub = None if sub_host is None else bk.asarray(sub_host, dtype=np.int64)
    train_mean = train.mean(axis=0)
    v_shift = bk.asarray(train_mean)
    h_shift = _hidden_shift(train, p, bk)
    v_shift_sub_h = (
        train_mean.astype(np.float64)
        if sub_host is None
        else train_mean[sub_host].astype(np.float64)
    )
    h_shift_h = bk.to_numpy(h_shift).astype(np.float64)

    g_test = min(N_BLOCKS, test.shape[0])
    with np.errstate(all="ignore"):
        train_sums = _data_moments(train, p, bk, sub, v_shift, h_shift)[0]
        test_parts = _data_moments(test, p, bk, sub, v_shift, h_shift, g_test)
        recon = _reconstruction_sums(test, p, visible, train_mean, train.shape[0], bk, g_test)

    # model samples: independent chains from random training frames, in groups for the jackknife
    rng = bk.rng(seed, _EVAL_STREAM)
    starts = np.random.default_rng([seed, _EVAL_STREAM]).integers(0, train.shape[0], n_chains)
    g_chain = min(N_BLOCKS, n_chains)
    cut = np.linspace(0, n_chains, g_chain + 1).round().astype(int)
    groups = [slice(int(a), int(b)) for a, b in zip(cut[:-1], cut[1:])]
    tp = _trainer_params(p, visible)
    bound = UNSTABLE_FACTOR * max(1.0, float(np.max(np.abs(train))) if train.size else 1.0)
    model_parts, max_abs_v, unstable_reason = _sample_model(
        tp,
        bk.asarray(train[starts]),
        visible,
        bk,
        rng,
        training.weights_t(tp, bk),
        n_burnin,
        n_samples,
        n_between,
        groups,
        p,
        sub,
        v_shift,
        h_shift,
        bound,
    )

    w = arrs["weights_"].astype(np.float64)
    mask = w != 0
    correction = training.penalty_gradient(w, penalty, lam, get_backend("numpy"))
    test_sums = _add_sums(test_parts)
    model_sums = _add_sums(model_parts)

    def vec_of(sums, corr=None):
        return _vectors(sums, sub_host, v_shift_sub_h, h_shift_h, mask, corr)

    with np.errstate(all="ignore"):
        vec = {
            "train": vec_of(train_sums),
            "test": vec_of(test_sums),
            "model": vec_of(model_sums, correction),
        }
        if not unstable_reason and not all(np.all(np.isfinite(x)) for x in vec["model"].values()):
            unstable_reason = "model statistics are non-finite"
    unstable = bool(unstable_reason)

    # every statistic's nRMSE parts on the full evaluation and on each jackknife replicate
    test_loo = [_sub_sums(test_sums, part) for part in test_parts] if g_test >= 2 else []
    model_loo = [_sub_sums(model_sums, part) for part in model_parts] if g_chain >= 2 else []
    total = recon.sum(axis=0)
    with np.errstate(all="ignore"):
        full = _parts(vec["test"], vec["model"], vec["train"])
        rep_chain = [_parts(vec["test"], vec_of(ms, correction), vec["train"]) for ms in model_loo]
        vec_test = [vec_of(ts) for ts in test_loo]
        rep_test = [_parts(vt, vec["model"], vec["train"]) for vt in vec_test]
    nllh = reconstruction_score(*total)
    nllh_test = [reconstruction_score(*(total - recon[b])) for b in range(len(rep_test))]

    def se_of(f):
        """Jackknife standard error of f(parts), chains and test blocks combined."""
        return math.hypot(
            jackknife_se([f(r) for r in rep_chain]), jackknife_se([f(r) for r in rep_test])
        )

    # unassessable statistics: by construction, then by the data (model-independent for v and
    # vv: a model cannot make a statistic unassessable by predicting it flat)
    skip: dict[str, str] = {}
    if getattr(dataset, "transform", None) == "zscore":
        skip["v"] = "z-scored units: the training means are 0 by construction"
    for s in STATS:
        if s in skip:
            continue
        if vec["test"][s].size == 0:
            skip[s] = "no elements (no non-zero weight)"
            continue
        flat, contrast = data_contrast(vec["test"][s], vec["train"][s])
        se = jackknife_se([data_contrast(vt[s], vec["train"][s])[1] for vt in vec_test])
        floor = _FLOAT_FLOOR * float(np.sqrt(np.mean(vec["test"][s] ** 2)))
        if not flat > floor:
            skip[s] = (
                f"the training frames predict the test frames no better than a constant "
                f"(RMSE(test, mean(train)) - RMSE_opt = {flat:.3g})"
            )
        elif not contrast > Z_MARGIN * se:
            skip[s] = (
                f"the training frames do not predict the test frames clearly better than "
                f"chance (RMSE_shuf(test, train) - RMSE_opt = {contrast:.3g}, not above "
                f"{Z_MARGIN:g} x its noise {se:.3g})"
            )

    out = {
        k: {s: float(full[s][i]) for s in STATS}
        for i, k in enumerate(("nrmse", "rmse_model", "rmse_opt", "rmse_shuf"))
    }
    for s in skip:
        out["nrmse"][s] = float("nan")
    objectives = verdicts.objective_values(out["nrmse"], skip, nllh)
    nrmse_se, upper = {}, {}
    for s in STATS:
        se = se_of(lambda r: r[s][0])  # noqa: B023 (called at once)
        nrmse_se[s] = float("nan") if s in skip else se
        upper[s] = out["nrmse"][s] + Z_MARGIN * se

    def objectives_of(r, nl):
        n = {s: (float("nan") if s in skip else r[s][0]) for s in STATS}
        return verdicts.objective_values(n, skip, nl)

    obj_chain = [objectives_of(r, nllh) for r in rep_chain]
    obj_test = [objectives_of(r, nl) for r, nl in zip(rep_test, nllh_test)]
    objective_se = {
        o: math.hypot(
            jackknife_se([x[o] for x in obj_chain]), jackknife_se([x[o] for x in obj_test])
        )
        for o in verdicts.OBJECTIVES
    }

    bad, reason = verdicts.verdict(
        out["nrmse"],
        upper,
        skip,
        params_finite=params_finite,
        diverged=diverged,
        unstable=unstable,
        weight_density=density,
    )
    rep = {o: verdicts.reported_objective(objectives[o], bad) for o in verdicts.OBJECTIVES}
    result = EvaluationResult(
        **out,
        mean_nrmse=rep["mean_nrmse"],
        max_nrmse=rep["max_nrmse"],
        bad=bad,
        sparsity=sparsity,
        weight_density=density,
        params_finite=params_finite,
        n_model_samples=int(model_sums["n"]),
        n_vv_pairs=n_pairs,
        seconds=time.perf_counter() - t0,
        settings=settings,
        bad_reason=reason,
        unstable=unstable,
        unstable_reason=unstable_reason,
        unassessable=skip,
        nrmse_se=nrmse_se,
        nrmse_upper=upper,
        nllh=float(nllh),
        max_criteria=rep["max_criteria"],
        objective_se=objective_se,
        weight_std=w_std,
        weights_converged=w_conv,
        max_abs_v=float(max_abs_v),
    )
    if return_stats:
        result.stats = {s: {side: vec[side][s].astype(np.float32) for side in vec} for s in STATS}
    return result


# --------------------------------------------------------------------------------------------
# Joint (cross-subject) datasets: the same evaluation per fish
# --------------------------------------------------------------------------------------------
def evaluate_joint(model, joint, **kwargs) -> dict:
    """nRMSE of a joint model overall and on each fish's held-out frames.

    Overall: :func:`raysearch.evaluation.evaluate` on all frames (train vs test of every fish).
    Per fish ``f``: the same with fish ``f``'s training frames as the reference, its test frames as
    the held-out data and chains started from its training frames. The model is one distribution
    for all fish, so a fish's nRMSE also says how much the other fish's assemblies leak into it.
    Filled units (see the module notes) count as observed at their mean; ``filled_units`` says
    how many there are.

    Parameters
    ----------
    model : fitted CRBM
    joint : JointDataset
    **kwargs
        Passed to :func:`~raysearch.evaluation.evaluate`.

    Returns
    -------
    dict
        ``{"overall": EvaluationResult, "fish": {name: EvaluationResult}, "filled_units":
        {name: int}}``.
    """
    out = {"overall": evaluate(model, joint, **kwargs), "fish": {}, "filled_units": {}}
    for f, name in enumerate(joint.fish_names):
        out["fish"][name] = evaluate(model, joint.fish_dataset(f), **kwargs)
        out["filled_units"][name] = int((~joint.present[f]).sum())
    return out


def joint_metrics(res: dict) -> dict:
    """Flat dict of :func:`evaluate_joint`'s result: overall keys as ``EvaluationResult.to_dict``,
    per-fish keys ``fish{f}_nrmse_{stat}`` and ``fish{f}_mean_nrmse`` (f = 0..F-1), and
    ``bad_any_fish``."""
    d = res["overall"].to_dict()
    bad_any = False
    for f, r in enumerate(res["fish"].values()):
        for k, v in r.nrmse.items():
            d[f"fish{f}_nrmse_{k}"] = float(v)
        d[f"fish{f}_mean_nrmse"] = float(r.mean_nrmse)
        bad_any = bad_any or bool(r.bad)
    d["bad_any_fish"] = bad_any
    return d


def per_fish_metrics(model, joint, eval_kw: dict, seed: int, backend) -> dict:
    """Per-fish nRMSE of a joint model for a trial's final report: ``fish{f}_nrmse_{stat}``,
    ``fish{f}_mean_nrmse`` (f in the study's recording order) and ``bad_any_fish``; NaN (and
    bad_any_fish True) for a diverged model."""
    out = {}
    finite = not getattr(model, "diverged_", False) and all(
        np.all(np.isfinite(np.asarray(getattr(model, a)))) for a in ("weights_", "fields_")
    )
    bad = not finite
    for f in range(joint.n_fish):
        if finite:
            with np.errstate(all="ignore"):
                r = evaluate(model, joint.fish_dataset(f), seed=seed, backend=backend, **eval_kw)
            vals, mean, bad = r.nrmse, r.mean_nrmse, bad or r.bad
        else:
            vals, mean = {k: float("nan") for k in STATS}, float("nan")
        for k in STATS:
            out[f"fish{f}_nrmse_{k}"] = float(vals[k])
        out[f"fish{f}_mean_nrmse"] = float(mean)
    out["bad_any_fish"] = bool(bad)
    return out
