"""What a user sees of a running study: the Ray dashboard, Ray metrics, the console, Optuna.

* **Ray dashboard, Jobs page.** :func:`job_metadata` is the ``JobConfig`` metadata of the driver
  that ``raysearch run`` starts: ``job_name`` (the name the dashboard shows) and the study name,
  search mode and experiment directory. Under ``ray job submit`` Ray lets the submission's
  ``--metadata-json`` win over the driver's keys, so give the same keys there (README).
* **Ray dashboard, Actors page.** Tune runs every trial in an actor of one class built from the
  trial function; :func:`named_trainable` names that class ``crbm_trial`` (Tune's
  ``ImplicitFunc`` otherwise) and gives it a ``repr`` with the trial id, λ, seed and recording,
  which Ray records as the actor's ``repr_name`` when the actor is created (the State API and the
  dashboard show it; Tune sets no actor ``name=``). With ``run.reuse_actors: true`` an actor that
  Tune reuses for a later trial keeps the label of its first one: Ray computes it once.
* **Ray metrics.** :func:`export_trial_metrics` (called by the trial at every report) sets Ray
  gauges (``ray.util.metrics``) tagged with study, trial id and λ; Ray's metrics agent serves
  them on each node's Prometheus endpoint as ``ray_raysearch_trial_*`` (:data:`METRICS`).
* **Console.** :func:`console_callbacks` replaces Tune's per-trial result boxes by one line per
  finished trial, a status table of λ, objective, ``bad`` and updates
  (:func:`progress_reporter`) and no TensorBoard files unless ``RAYSEARCH_TENSORBOARD=1``
  (:func:`logger_callbacks`); :func:`next_steps` is what ``raysearch run`` prints at the end.
* **Optuna.** :class:`MonitoredOptunaSearch` is Tune's ``OptunaSearch`` that names the
  objectives (``study.set_metric_names``), writes every trial's user attributes (Tune trial id,
  seed, recording, nRMSE per statistic, bad, bad_reason, weight density, model path) and tells
  Optuna :data:`DIVERGED_VALUE` instead of a non-finite value, so that diverged fits stay
  visible in optuna-dashboard's plots (Optuna drops inf there, and refuses NaN).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "job_metadata",
    "named_trainable",
    "trial_label",
    "export_trial_metrics",
    "METRICS",
    "MonitoredOptunaSearch",
    "DIVERGED_VALUE",
    "USER_ATTRS",
    "progress_reporter",
    "console_callbacks",
    "logger_callbacks",
    "next_steps",
    "TENSORBOARD_ENV",
]

STAT_NAMES = ("v", "h", "vh", "vv", "hh")

#: The value Optuna is told for a trial whose objective is NaN or infinite (a diverged or
#: unassessable fit). It is larger than any nRMSE of a usable fit (a fit is bad above 1), so
#: TPE ranks such trials last, as it did with inf, and optuna-dashboard plots them (at the top)
#: instead of dropping them; the user attribute ``objective_reported`` keeps the real figure.
DIVERGED_VALUE = 10.0

#: Optuna user attributes written for every trial (``bad_reason`` only when the trial reports it).
USER_ATTRS = (
    "tune_trial_id",
    "seed",
    "recording",
    "n_hidden",
    *(f"nrmse_{s}" for s in STAT_NAMES),
    "mean_nrmse",
    "max_nrmse",
    "bad",
    "bad_reason",
    "weight_density",
    "updates",
    "model_path",
    "objective_reported",
)

#: Prometheus names (as Ray's metrics agent serves them, with its ``ray_`` prefix) -> meaning.
METRICS = {
    "ray_raysearch_trial_updates": "parameter updates done by the trial",
    "ray_raysearch_trial_seconds_per_update": "wall seconds per update since the trial's "
    "previous report",
    "ray_raysearch_trial_objective": "latest objective (mean or max nRMSE; 10 when not finite)",
    "ray_raysearch_trial_nrmse": "latest nRMSE per statistic (tag statistic: v, h, vh, vv, hh; "
    "10 when not finite)",
    "ray_raysearch_trial_bad": "1 when the latest evaluation flags the fit bad, else 0",
}
_TAGS = ("study", "trial_id", "lam")

#: Set to 1 to write Tune's TensorBoard event files (``pip install "raysearch[tensorboard]"``).
TENSORBOARD_ENV = "RAYSEARCH_TENSORBOARD"


# ------------------------------------------------------------------------- Ray dashboard: jobs
def job_metadata(study, experiment_dir: str) -> dict[str, str]:
    """The Ray job metadata of a study's driver (all values strings, as Ray requires).

    ``job_name`` is the key the Ray dashboard shows as the job's name.
    """
    return {
        "job_name": f"raysearch {study.name}",
        "raysearch_study": str(study.name),
        "raysearch_mode": str(study.search.mode),
        "raysearch_experiment_dir": str(experiment_dir),
    }


# ----------------------------------------------------------------------- Ray dashboard: actors
def trial_label(config: dict, trial_id: str | None = None) -> str:
    """``crbm_trial(<trial id>, lam=0.001, seed=0, recording=fish)``: one trial in a few words."""
    parts = [str(trial_id)] if trial_id else []
    lam = config.get("lam")
    if isinstance(lam, (int, float)):
        parts.append(f"lam={lam:.4g}")
    for key in ("seed", "recording", "n_hidden"):
        if key in config and not isinstance(config[key], dict):
            parts.append(f"{key}={config[key]}")
    return f"crbm_trial({', '.join(parts)})"


def named_trainable(fn):
    """Tune's class for the function trainable ``fn``, named after it, with a readable ``repr``.

    Parameters
    ----------
    fn : callable
        A Tune function trainable (e.g. from ``tune.with_parameters``).

    Returns
    -------
    type
        A subclass of the class Tune would build (``wrap_function(fn)``) whose ``__name__`` is
        ``fn.__name__`` (so ``Tuner.restore`` recognises experiments of the plain function) and
        whose instances' ``repr`` is :func:`trial_label` of their config. Its actors log no
        "Checkpoint successfully created" line per report.
    """
    from ray.tune.trainable.function_trainable import wrap_function

    base = wrap_function(fn)
    name = getattr(fn, "__name__", "crbm_trial")

    def __repr__(self):
        try:
            return trial_label(dict(self.config or {}), self.trial_id)
        except Exception:  # noqa: BLE001 - a repr must never raise
            return name

    def setup(self, config, *args, **kwargs):
        # Tune logs "Checkpoint successfully created at: ..." at every report of every trial
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
        return base.setup(self, config, *args, **kwargs)

    return type(
        name,
        (base,),
        {"__repr__": __repr__, "setup": setup, "__qualname__": name, "__module__": __name__},
    )


# ------------------------------------------------------------------------------- Ray metrics
_gauges: dict[str, Any] = {}
_last: dict[str, tuple[float, float]] = {}
_lock = threading.Lock()


def _gauge(short: str):
    from ray.util.metrics import Gauge

    with _lock:
        if short not in _gauges:
            full = f"ray_raysearch_trial_{short}"
            tags = _TAGS + (("statistic",) if short == "nrmse" else ())
            _gauges[short] = Gauge(
                f"raysearch_trial_{short}", description=METRICS[full], tag_keys=tags
            )
        return _gauges[short]


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def export_trial_metrics(row: dict, objective: str = "mean_nrmse") -> dict | None:
    """Publish one trial report as Ray gauges; returns the values set (None outside Ray).

    Parameters
    ----------
    row : dict
        What the trial reports: ``lam``, ``updates``, ``seconds``, ``nrmse_<stat>``, the
        objective, ``bad``.
    objective : str
        Key of the objective in ``row``.

    A NaN or infinite objective or nRMSE is exported as :data:`DIVERGED_VALUE` (Ray's metrics
    agent does not export non-finite gauge values), as Optuna is told. Never raises: monitoring
    must not fail a fit.
    """
    try:
        from ray import tune

        ctx = tune.get_context()
        trial_id = ctx.get_trial_id()
        study = ctx.get_experiment_name()
        if not trial_id:
            return None
        tags = {
            "study": str(study),
            "trial_id": str(trial_id),
            "lam": f"{_float(row.get('lam')):.4g}",
        }
        updates, seconds = _float(row.get("updates")), _float(row.get("seconds"))
        prev_u, prev_s = _last.get(trial_id, (0.0, 0.0))
        if updates < prev_u:  # a restart from an older checkpoint
            prev_u, prev_s = 0.0, 0.0
        per_update = (seconds - prev_s) / (updates - prev_u) if updates > prev_u else math.nan
        _last[trial_id] = (updates, seconds)
        values = {
            "updates": updates,
            "seconds_per_update": per_update,
            "objective": finite_value(row.get(objective)),
            "bad": float(bool(row.get("bad"))),
        }
        for short, v in values.items():
            if v is not None and not math.isnan(v):
                _gauge(short).set(v, tags=tags)
        for s in STAT_NAMES:
            v = finite_value(row.get(f"nrmse_{s}"))
            values[f"nrmse_{s}"] = v
            if v is not None:
                _gauge("nrmse").set(v, tags=tags | {"statistic": s})
        return values
    except Exception as exc:  # noqa: BLE001
        log.debug("could not export trial metrics: %s", exc)
        return None


# ------------------------------------------------------------------------------------ Optuna
def _attr_value(v):
    """A JSON-safe user attribute: finite floats, ints, bools, strings; inf/NaN as text."""
    if v is None:
        return None
    if isinstance(v, bool) or type(v).__name__ == "bool_":
        return bool(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) or hasattr(v, "dtype"):
        f = float(v)
        return f if math.isfinite(f) else str(f)
    return str(v)


def user_attributes(tune_trial_id: str, result: dict, objective: str) -> dict:
    """The Optuna user attributes of one Tune result (see :data:`USER_ATTRS`)."""
    out = {"tune_trial_id": tune_trial_id}
    for k in USER_ATTRS[1:-1]:
        if k in result:
            out[k] = _attr_value(result[k])
    out["objective_reported"] = _attr_value(result.get(objective))
    return out


def finite_value(v) -> float | None:
    """What Optuna is told: the value, or :data:`DIVERGED_VALUE` when it is NaN or infinite."""
    if v is None:
        return None
    f = _float(v)
    return f if math.isfinite(f) else DIVERGED_VALUE


def _optuna_search_cls():
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch


class MonitoredOptunaSearch(_optuna_search_cls()):
    """Tune's ``OptunaSearch`` that leaves a readable Optuna study behind.

    * the objectives are named (``set_metric_names``) after the Tune metrics;
    * every completed trial gets the user attributes of :func:`user_attributes`;
    * a NaN or infinite value is told as :data:`DIVERGED_VALUE` (intermediate values too), so the
      trial ends COMPLETE and is plotted, where NaN would leave it RUNNING and inf hide it.
    """

    def _setup_study(self, mode):
        super()._setup_study(mode)
        names = list(self.metric) if isinstance(self.metric, list) else [self.metric]
        try:
            with warnings.catch_warnings():  # "experimental" in Optuna 3.2 to 5.1
                warnings.simplefilter("ignore")
                self._ot_study.set_metric_names(names)
        except Exception as exc:  # noqa: BLE001 - older Optuna, or a study named otherwise
            log.warning("could not name the Optuna objectives %s: %s", names, exc)

    def _finite_result(self, result: dict | None) -> dict | None:
        if not result:
            return result
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        out = dict(result)
        for m in metrics:
            if m in out:
                out[m] = finite_value(out[m])
        return out

    def on_trial_result(self, trial_id: str, result: dict):
        super().on_trial_result(trial_id, self._finite_result(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and trial_id not in self._completed_trials:
            primary = self.metric[0] if isinstance(self.metric, list) else self.metric
            try:
                for k, v in user_attributes(trial_id, result, primary).items():
                    ot_trial.set_user_attr(k, v)
            except Exception as exc:  # noqa: BLE001 - never what stops a study
                log.warning("could not write the Optuna user attributes of %s: %s", trial_id, exc)
        super().on_trial_complete(trial_id, self._finite_result(result), error)


# ----------------------------------------------------------------------------------- console
def progress_reporter(objective: str = "mean_nrmse", multi: bool = False):
    """Tune's status table: λ (and seed, recording when searched), objective, bad, updates."""
    from ray.tune import CLIReporter

    metrics = {objective: objective, "bad": "bad", "updates": "updates"}
    if multi:
        metrics["weight_density"] = "weight_density"
    return CLIReporter(
        parameter_columns={"lam": "lam", "seed": "seed", "recording": "recording"},
        metric_columns=metrics,
        max_report_frequency=30,
        print_intermediate_tables=True,
    )


def _tbx_base():
    from ray.tune.logger import TBXLoggerCallback

    return TBXLoggerCallback


class TensorBoardOff(_tbx_base()):
    """Stands in for Tune's TensorBoard logger, so that Tune does not add one: it writes nothing.

    Tune adds CSV, JSON and TensorBoard loggers unless callbacks of those types are given; the
    TensorBoard one warns about every NaN/inf figure (a diverged fit reports several) and needs
    the ``tensorboard`` program to be read.
    """

    def __init__(self):  # no tensorboardX import
        self._trial_writer = {}
        self._trial_result = {}

    def log_trial_start(self, trial):
        pass

    def log_trial_result(self, iteration, trial, result):
        pass

    def log_trial_end(self, trial, failed=False):
        pass


def logger_callbacks() -> list:
    """Tune's CSV and JSON loggers, and TensorBoard only when ``RAYSEARCH_TENSORBOARD=1``."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    tbx = TBXLoggerCallback() if os.environ.get(TENSORBOARD_ENV, "0") == "1" else TensorBoardOff()
    return [CSVLoggerCallback(), JsonLoggerCallback(), tbx]


def _trial_callback_base():
    from ray.tune import Callback

    return Callback


class FinishedTrialLine(_trial_callback_base()):
    """Prints one line per finished trial: id, λ, seed, objective, bad, updates, seconds."""

    def __init__(self, objective: str = "mean_nrmse", stream=None):
        self.objective = objective
        self.stream = stream

    def line(self, trial) -> str:
        r = trial.last_result or {}
        cfg = trial.config or {}
        lam = _float(cfg.get("lam", r.get("lam")))
        obj = _float(r.get(self.objective))
        bits = [f"Trial {trial.trial_id} finished: lam={lam:.4g}"]
        if "seed" in cfg:
            bits.append(f"seed={cfg['seed']}")
        bits.append(f"{self.objective}={obj:.4g}")
        bits.append(f"bad={bool(r.get('bad'))}")
        if r.get("bad_reason"):
            bits.append(f"({r['bad_reason']})")
        bits.append(f"updates={r.get('updates', '?')}")
        sec = _float(r.get("seconds"))
        if math.isfinite(sec):
            bits.append(f"{sec:.1f} s")
        return " ".join(bits)

    def on_trial_complete(self, iteration, trials, trial, **info):
        print(self.line(trial), file=self.stream, flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(
            f"Trial {trial.trial_id} failed (see its error.txt in the trial folder)",
            file=self.stream,
            flush=True,
        )


def console_callbacks(objective: str = "mean_nrmse") -> list:
    """Every Tune callback raysearch adds: loggers (:func:`logger_callbacks`) and the one line per
    finished trial (:class:`FinishedTrialLine`)."""
    return logger_callbacks() + [FinishedTrialLine(objective)]


def use_legacy_console() -> None:
    """Use Tune's classic console (status table from :func:`progress_reporter`); Tune's newer
    console ignores a progress reporter and prints a ~45-line box per finished trial."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


def next_steps(experiment_dir: str, optuna_url: str | None = None) -> list[str]:
    """The lines printed at the end of ``raysearch run``/``resume``: where the results are and
    what to run next."""
    lines = [
        f"Results are in {experiment_dir}",
        "Next:",
        f"  raysearch results {experiment_dir}        # the trials, best and recommended lambda",
        f"  raysearch analyze {experiment_dir}        # couplings, clusters, report.html",
    ]
    if optuna_url:
        lines.append(
            f"  optuna-dashboard {optuna_url}   # the Optuna study "
            '(pip install "raysearch[dashboard]")'
        )
    return lines
