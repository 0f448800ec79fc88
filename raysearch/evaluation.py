"""Held-out evaluation of a fitted cRBM (CRBM.md §4): five statistics, nRMSE, the bad-model flag.

::

    res = evaluate(model, dataset)             # defaults: 300 chains x 50 samples, 20 steps apart
    res.nrmse["vv"], res.mean_nrmse, res.bad
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
model was flagged bad (h nRMSE 1.4) or not (-0.05) depending on the evaluation seed. A model is
bad when any nRMSE is > 1 or NaN (including an ill-conditioned one, see :data:`MIN_CONTRAST`), or
its parameters are non-finite, or (Gaussian visibles) :mod:`raysearch.stability` proves it is not
normalisable: then it is not sampled, every nRMSE is NaN and ``unstable``/``unstable_reason`` say
why. When those parameter checks cannot decide, the chains run at least
:data:`UNDETERMINED_MIN_STEPS` Gibbs steps.

Weight sparsity (both over all M x N weights; NaN for non-finite weights):

* ``weight_density``: fraction of weights with |w| > 0.01 (the paper's assembly-size measure:
  mean assembly size = weight_density * N);
* ``sparsity``: fraction of weights that are negligible relative to their hidden unit,
  |w_{mu i}| <= 0.01 * max_i |w_{mu i}| (scale-free; 1 - the relative density).

Sums are accumulated on the backend (float32, centred on the training means to avoid cancellation),
and only the small moment arrays come back to the host.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raysearch.backend import get_backend
from raysearch.crbm import training, units
from raysearch.errors import ConfigError, InputError

__all__ = ["STATS", "EvaluationResult", "evaluate", "nrmse", "nrmse_from_rmse", "rmse",
           "pair_subset", "is_bad", "weight_sparsity"]

STATS = ("v", "h", "vh", "vv", "hh")
_EVAL_STREAM = 7_001          # rng stream id of evaluation draws (trainer streams differ)
_CHUNK = 1024                 # data frames per backend chunk
#: Fewest Gibbs steps (burn-in + sampling) of the evaluation chains of a Gaussian model whose
#: normalisability the parameter checks cannot decide (raysearch.stability): chains of
#: non-normalisable models fitted to a 2,000-neuron z-scored fish ran away only after
#: 1,200-1,700 steps, so 4,000 leaves a factor > 2.
UNDETERMINED_MIN_STEPS = 4000


# --------------------------------------------------------------------------------------------
# Pure formulas
# --------------------------------------------------------------------------------------------
def rmse(a, b) -> float:
    """sqrt(mean((a - b)^2)) of two equal-length host vectors (NaN if empty)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((a - b) ** 2)))


#: An nRMSE is undefined (NaN, so the model is bad) when its denominator RMSE_shuf - RMSE_opt is at
#: most this fraction of RMSE_shuf: the training frames then predict the test frames' statistic
#: hardly better than chance, and the ratio is noise over almost nothing (measured: a nearly empty
#: quickstart model had hh RMSE_opt 0.00298 vs RMSE_shuf 0.00300 and nRMSE -6.5, which made it
#: the best mean nRMSE of its study). 0 is the limit where the denominator vanishes exactly.
MIN_CONTRAST = 0.05


def nrmse_from_rmse(rmse_model: float, rmse_opt: float, rmse_shuf: float) -> float:
    """(RMSE_model - RMSE_opt)/(RMSE_shuf - RMSE_opt).

    NaN when any input is non-finite or the denominator is at most :data:`MIN_CONTRAST` x
    RMSE_shuf (ill-conditioned: the statistic does not carry over from training to test frames).
    """
    den = rmse_shuf - rmse_opt
    if not (math.isfinite(rmse_model) and math.isfinite(rmse_opt) and math.isfinite(rmse_shuf)) \
            or den <= MIN_CONTRAST * rmse_shuf:
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
        raise ValueError(f"statistic vectors differ in length: test {s_test.shape}, "
                         f"model {s_model.shape}, train {s_train.shape}")
    r_model = rmse(s_test, s_model)
    r_opt = rmse(s_test, s_train)
    r_shuf = shuffled_rmse(s_test, s_model)
    return nrmse_from_rmse(r_model, r_opt, r_shuf), r_model, r_opt, r_shuf


def is_bad(nrmse_dict: dict, params_finite: bool) -> bool:
    """True when any nRMSE is > 1 or NaN, or the parameters are non-finite."""
    if not params_finite:
        return True
    return any(not (v <= 1.0) for v in nrmse_dict.values())     # NaN compares False


def _pair_units(n_units: int, max_pairs: int, seed: int):
    if n_units * (n_units - 1) // 2 <= max_pairs:
        return None
    k = int((1 + math.isqrt(1 + 8 * max_pairs)) // 2)            # k(k-1)/2 <= max_pairs
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


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------
@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`. ``stats`` holds ``{stat: {"train", "test", "model"}}`` host
    vectors only when asked for (``return_stats=True``)."""

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
    unstable: bool = False
    unstable_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-able dict of plain Python values (NaN possible for failed statistics)."""
        d: dict[str, Any] = {}
        for s in STATS:
            d[f"nrmse_{s}"] = float(self.nrmse[s])
        d["mean_nrmse"] = float(self.mean_nrmse)
        d["max_nrmse"] = float(self.max_nrmse)
        d["bad"] = bool(self.bad)
        d["sparsity"] = float(self.sparsity)
        d["weight_density"] = float(self.weight_density)
        d["params_finite"] = bool(self.params_finite)
        for name in ("rmse_model", "rmse_opt", "rmse_shuf"):
            for s in STATS:
                d[f"{name}_{s}"] = float(getattr(self, name)[s])
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

    def vectors(self, vh_mask, vh_correction=None):
        """Host statistic vectors {v, h, vh, vv, hh} (float64)."""
        bk, n = self.bk, float(self.n)
        g = lambda a: bk.to_numpy(a).astype(np.float64) / n   # noqa: E731
        mv, mh, mvh, cvv, chh = g(self.sv), g(self.sh), g(self.svh), g(self.svv), g(self.shh)
        dv = mv if self.sub is None else mv[bk.to_numpy(self.sub)]
        dv = dv - bk.to_numpy(self.v_shift_sub).astype(np.float64)
        cvv -= np.outer(dv, dv)             # E[(v-c)(v-c)] - E[v-c]E[v-c] = Cov(v)
        dh = mh - bk.to_numpy(self.h_shift).astype(np.float64)
        chh -= np.outer(dh, dh)
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
        raise InputError(f"evaluate: the model has no {', '.join(missing)}: fit it (or "
                         "CRBM.load a model file) before evaluating")
    arrs = {n: np.asarray(getattr(model, n), dtype=np.float32) for n in names}
    finite = all(np.all(np.isfinite(a)) for a in arrs.values())
    return arrs, finite


def _penalty_gradient(w, penalty):
    """dPenalty/dw / lam for a (M, N) weight matrix (host)."""
    if penalty == "l1":
        return np.sign(w)
    if penalty == "l2l1":
        return np.sign(w) * np.abs(w).sum(axis=1, keepdims=True)
    raise ConfigError(f"evaluate: unknown penalty {penalty!r} (use 'l1' or 'l2l1')")


def _data_moments(V_host, p, bk, sub, v_shift, h_shift):
    T, N = V_host.shape
    M = p["W"].shape[0]
    acc = _Moments(bk, N, M, sub, v_shift, h_shift)
    for s in range(0, T, _CHUNK):
        v = bk.asarray(V_host[s:s + _CHUNK])
        h = units.drelu_mean(units.hidden_inputs(v, p["W"]), *p["hidden"], bk)
        acc.add(v, h)
    return acc


def _hidden_shift(V_host, p, bk):
    """Mean E[h|v] over the first chunk of frames: the centre for the hh sums (any value near
    the mean avoids cancellation; it does not change the statistic)."""
    v = bk.asarray(V_host[:_CHUNK])
    return units.drelu_mean(units.hidden_inputs(v, p["W"]), *p["hidden"], bk).mean(axis=0)


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


def evaluate(model, dataset, n_chains: int = 300, n_burnin: int = 2000, n_samples: int = 50,
             n_between: int = 20, seed: int = 0, max_pairs: int = 1_000_000,
             return_stats: bool = False, backend=None, pair_seed: int = 0) -> EvaluationResult:
    """Compare the model's statistics with held-out data (CRBM.md §4).

    Parameters
    ----------
    model : fitted CRBM (or any object with its learned attributes)
        Uses ``weights_`` (M, N), ``fields_`` (N,), ``gamma_plus_``, ``gamma_minus_``,
        ``theta_plus_``, ``theta_minus_`` (M,), ``visible``, ``penalty``, ``lam`` and, for
        gaussian visibles, ``gamma_`` (N,). A model with ``diverged_ = True`` is bad.
    dataset : Dataset
        Uses ``train`` (T_train, N) and ``test`` (T_test, N).
    n_chains, n_burnin, n_samples, n_between : int
        Model sampling: chains from random training frames, burn-in steps, samples per chain, Gibbs
        steps between saved samples. Smaller values give a cheaper, noisier evaluation.
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
        raise InputError("evaluate: dataset must have .train and .test arrays (a raysearch Dataset)")
    train = np.ascontiguousarray(train, dtype=np.float32)
    test = np.ascontiguousarray(test, dtype=np.float32)
    arrs, finite = _model_arrays(model)
    M, N = arrs["weights_"].shape
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != N or test.shape[1] != N:
        raise InputError(f"evaluate: the model has {N} visible units but the data are train "
                         f"{train.shape}, test {test.shape}")
    if train.shape[0] < 1 or test.shape[0] < 1:
        raise InputError("evaluate: train and test data must have at least one frame each")
    visible = getattr(model, "visible", "bernoulli")
    if visible not in ("bernoulli", "gaussian"):
        raise ConfigError(f"evaluate: unknown visible type {visible!r}")
    penalty = getattr(model, "penalty", "l2l1")
    lam = float(getattr(model, "lam", 0.0))
    params_finite = finite and not bool(getattr(model, "diverged_", False))
    sparsity, density = weight_sparsity(arrs["weights_"])
    settings = dict(n_chains=n_chains, n_burnin=n_burnin, n_samples=n_samples,
                    n_between=n_between, seed=seed, max_pairs=max_pairs)
    sub_host = _pair_units(N, max_pairs, _check_int("pair_seed", pair_seed, 0))
    n_pairs = (N * (N - 1) // 2) if sub_host is None else sub_host.size * (sub_host.size - 1) // 2

    def failed():
        nan = {s: float("nan") for s in STATS}
        return EvaluationResult(nrmse=dict(nan), rmse_model=dict(nan), rmse_opt=dict(nan),
                                rmse_shuf=dict(nan), mean_nrmse=float("nan"),
                                max_nrmse=float("nan"), bad=True, sparsity=sparsity,
                                weight_density=density, params_finite=params_finite,
                                n_model_samples=0, n_vv_pairs=n_pairs,
                                seconds=time.perf_counter() - t0, settings=settings)

    if not finite:
        return failed()
    # Gaussian visibles: a model that is not normalisable (raysearch.stability) has no statistics
    # to compare; its chains would only run away. Undetermined models get chains of at least
    # UNDETERMINED_MIN_STEPS Gibbs steps, long enough for a run-away to show.
    if visible == "gaussian":
        from raysearch.stability import check_stability

        verdict = check_stability(arrs["weights_"], arrs["gamma_"], arrs["gamma_plus_"],
                                  arrs["gamma_minus_"])
        settings["stability"] = verdict.verdict
        settings["stability_margin"] = float(verdict.margin)
        if verdict.verdict == "unstable":
            res = failed()
            res.unstable, res.unstable_reason = True, verdict.reason
            return res
        if verdict.verdict == "undetermined":
            n_burnin = max(n_burnin, UNDETERMINED_MIN_STEPS - n_samples * n_between)
            settings["n_burnin"] = n_burnin

    if backend is None:
        backend = getattr(model, "backend", "auto")
    bk = get_backend(backend)
    p = {"W": bk.asarray(arrs["weights_"]), "g": bk.asarray(arrs["fields_"]),
         "hidden": tuple(bk.asarray(arrs[k]) for k in
                         ("gamma_plus_", "gamma_minus_", "theta_plus_", "theta_minus_"))}
    if visible == "gaussian":
        p["gamma"] = bk.asarray(arrs["gamma_"])
    sub = None if sub_host is None else bk.asarray(sub_host, dtype=np.int64)
    v_shift = bk.asarray(train.mean(axis=0))
    h_shift = _hidden_shift(train, p, bk)

    stats = {"train": _data_moments(train, p, bk, sub, v_shift, h_shift),
             "test": _data_moments(test, p, bk, sub, v_shift, h_shift)}

    # model samples: independent chains from random training frames
    rng = bk.rng(seed, _EVAL_STREAM)
    starts = np.random.default_rng([seed, _EVAL_STREAM]).integers(0, train.shape[0], n_chains)
    v = bk.asarray(train[starts])
    acc = _Moments(bk, N, M, sub, v_shift, h_shift)
    tp = _trainer_params(p, visible)
    WT = training.weights_t(tp, bk)
    with np.errstate(all="ignore"):     # a diverging model's chains may overflow: NaN -> bad
        v = training.gibbs(tp, v, n_burnin, visible, bk, rng, WT)
        for _ in range(n_samples):
            v = training.gibbs(tp, v, n_between, visible, bk, rng, WT)
            acc.add(v, units.drelu_mean(units.hidden_inputs(v, p["W"]), *p["hidden"], bk))
    stats["model"] = acc

    w = arrs["weights_"].astype(np.float64)
    mask = w != 0
    correction = lam * _penalty_gradient(w, penalty)
    with np.errstate(all="ignore"):
        vec = {"train": stats["train"].vectors(mask), "test": stats["test"].vectors(mask),
               "model": stats["model"].vectors(mask, correction)}

    out = {k: {} for k in ("nrmse", "rmse_model", "rmse_opt", "rmse_shuf")}
    for s in STATS:
        with np.errstate(all="ignore"):
            r = nrmse(vec["test"][s], vec["model"][s], vec["train"][s])
        for name, value in zip(out, r):
            out[name][s] = float(value)
    values = np.array([out["nrmse"][s] for s in STATS])
    result = EvaluationResult(
        **out, mean_nrmse=float(np.mean(values)), max_nrmse=float(np.max(values)),
        bad=is_bad(out["nrmse"], params_finite), sparsity=sparsity, weight_density=density,
        params_finite=params_finite, n_model_samples=n_chains * n_samples, n_vv_pairs=n_pairs,
        seconds=time.perf_counter() - t0, settings=settings)
    if return_stats:
        result.stats = {s: {side: vec[side][s].astype(np.float32) for side in vec} for s in STATS}
    return result
