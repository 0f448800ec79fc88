"""The Tune trial: one cRBM fit for one (λ, seed, recording[, n_hidden]).

:func:`crbm_trial` is a plain Tune function trainable. The driver wraps it with
``tune.with_parameters(crbm_trial, datasets=..., settings=...)`` so that the preprocessed datasets
travel once through Ray's object store; the trial never reads the recording itself.

Every ``evaluation.report_every`` updates the trial evaluates the model with the cheap ``during``
settings and calls ``tune.report`` with the metrics and a Tune checkpoint that holds the CRBM's own
checkpoint file. When Tune restarts the trial (worker lost, ``raysearch resume``) it resumes the fit
from that file, so the update count goes on. At the end it evaluates with the ``final`` settings,
writes ``<experiment>/models/<trial_id>.h5`` (the model file with ``/units`` and ``/evaluation``),
and reports the final metrics once more with ``final=True``.

A fit that diverges (non-finite parameters or metrics, or a Gaussian model that stops being
normalisable, see :mod:`raysearch.stability`: the fit then stops at that boundary) is not an
error: the trial ends normally with ``bad=True``, its ``bad_reason``, ``diverged=True`` and
``diverged_reason`` saying why, and every non-finite figure reported as ``inf`` (Optuna
rejects NaN and would leave the trial RUNNING forever). The objectives of every bad fit are
reported as ``inf`` (:mod:`raysearch.verdicts`): what Optuna minimises agrees with the verdict.
Intermediate reports (the cheap ``during`` evaluation) make the objectives inf only for a broken
fit (:data:`BROKEN`): there, "not told from chance" is mostly the cheap evaluation's noise, and
ASHA must still compare the trials' progress.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import re
import shutil
import socket
import tempfile
import time
from typing import Any

import numpy as np

from raysearch import verdicts

logger = logging.getLogger(__name__)

__all__ = [
    "crbm_trial",
    "STAT_NAMES",
    "METRIC_KEYS",
    "sanitize_metrics",
    "trial_settings",
    "CHECKPOINT_FILE",
    "restore_checkpoint",
    "resume_from_folder",
]

# the metric vocabulary is raysearch.verdicts'; these names are kept for the callers
STAT_NAMES = verdicts.STATS
NRMSE_KEYS = verdicts.NRMSE_COLUMNS
#: every float figure a trial reports (nRMSEs, objectives, reconstruction, their noise, sparsity)
METRIC_KEYS = verdicts.METRIC_COLUMNS
# the parts of each nRMSE (NaN where a statistic failed), reported alongside: they show when an
# nRMSE is ill-conditioned (rmse_shuf close to rmse_opt)
RMSE_KEYS = verdicts.RMSE_COLUMNS
#: the verdict's text and flag fields, reported as they are
VERDICT_KEYS = (
    "bad_reason",
    "unstable",
    "unstable_reason",
    "unassessable",
    "unassessable_reason",
    "weights_converged",
)
CHECKPOINT_FILE = "crbm_checkpoint.h5"

# Errors a numerically broken fit may raise; they mark the trial bad instead of failing it.
_DIVERGENCE_ERRORS = (FloatingPointError, ArithmeticError, np.linalg.LinAlgError)


def trial_settings(study, experiment_dir: str) -> dict[str, Any]:
    """The plain-dict settings every trial of ``study`` needs (JSON-able, small).

    Parameters
    ----------
    study : raysearch.search.config.Study
    experiment_dir : str
        Absolute path or URI of the experiment directory (models go to ``<it>/models``).
    """
    return {
        "experiment_dir": str(experiment_dir),
        "penalty": study.search.penalty,
        "objective": study.search.objective,
        "crbm": study.model.crbm_kwargs(),
        "n_hidden": study.model.n_hidden,
        "n_updates": study.model.n_updates,
        "report_every": study.evaluation.report_every,
        "eval_during": study.evaluation.during.model_dump(),
        "eval_final": study.evaluation.final.model_dump(),
        "eval_seed": study.evaluation.seed,
        "gpu": study.resources.gpu,
        "cpu": study.resources.cpu,
    }


#: Verdicts that make even an intermediate report's objective inf: the fit itself is broken. An
#: intermediate (cheap, noisy) evaluation that cannot tell a fit from chance keeps its objective,
#: so that ASHA still compares the trials' progress; the final report is always consistent.
BROKEN = ("diverged", "unstable", "empty")


def sanitize_metrics(metrics: dict[str, Any], final: bool = True) -> dict[str, Any]:
    """What a trial reports: every figure a finite float or ``inf``, the objectives consistent
    with the verdict.

    NaN/None figures become ``inf`` (a final NaN leaves an Optuna trial RUNNING), except the nRMSE
    of an unassessable statistic (listed in ``unassessable``), which stays NaN. A non-finite
    objective makes the fit bad (reason ``undefined`` unless one is given), and the objectives
    of a bad fit are ``inf`` (:func:`raysearch.verdicts.reported_objective`), so Optuna, Tune's
    schedulers and every table see a bad fit as the worst.

    Parameters
    ----------
    metrics : dict
        Keys of :data:`METRIC_KEYS` (others are passed through unchanged), ``bad`` and
        ``bad_reason``.
    final : bool
        False for an intermediate report: only a :data:`BROKEN` fit (or a non-finite objective)
        reports inf objectives.

    Returns
    -------
    dict
        A copy in which every value of :data:`METRIC_KEYS` is a finite float or ``inf`` (NaN
        for an unassessable statistic's nRMSE).
    """
    out = dict(metrics)
    finite = True
    skip = {f"nrmse_{s}" for s in str(out.get("unassessable") or "").split(",") if s}
    for k in METRIC_KEYS:
        v = out.get(k)
        try:
            v = float(v)
        except (TypeError, ValueError):
            v = math.nan
        if k in skip:
            v = math.nan  # unassessable: no nRMSE (never an objective, so NaN is safe)
        elif not math.isfinite(v):
            finite = False if k in verdicts.OBJECTIVES and k != "max_criteria" else finite
            v = math.inf
        out[k] = v
    bad = bool(out.get("bad", False)) or not finite
    out["bad"] = bad
    out["bad_reason"] = str(out.get("bad_reason") or ("undefined" if bad else ""))
    undefined = bad if final else (bad and (out["bad_reason"] in BROKEN or not finite))
    for k in verdicts.OBJECTIVES:
        out[k] = verdicts.reported_objective(out[k], undefined)
    return out


def _diverged_metrics() -> dict[str, Any]:
    return sanitize_metrics(
        {k: math.inf for k in METRIC_KEYS} | {"bad": True, "bad_reason": "diverged"}
    )


def _evaluate(model, dataset, eval_kw: dict, seed: int, backend, return_stats=False, final=True):
    """Run raysearch.evaluate; return (metrics dict, stats or None). Non-finite -> bad/inf."""
    from raysearch.evaluation import evaluate

    if getattr(model, "diverged_", False) or not _params_finite(model):
        metrics = _diverged_metrics()
        why = str(getattr(model, "diverged_reason_", ""))
        metrics["unstable"] = why.startswith("unstable")
        metrics["unstable_reason"] = why if metrics["unstable"] else ""
        return metrics, None
    try:
        res = evaluate(
            model, dataset, seed=seed, return_stats=return_stats, backend=backend, **eval_kw
        )
    except _DIVERGENCE_ERRORS:
        return _diverged_metrics(), None
    d = res.to_dict()
    metrics = {k: d.get(k) for k in METRIC_KEYS}
    metrics["bad"] = bool(d.get("bad", False))
    metrics.update({k: d.get(k) for k in VERDICT_KEYS})
    if not final and d.get("bad") and d.get("bad_reason") not in BROKEN:
        # an intermediate report: the objectives as computed (evaluate reports inf when bad)
        metrics.update(_raw_objectives(res))
    metrics = sanitize_metrics(metrics, final=final)
    metrics.update({k: d.get(k) for k in RMSE_KEYS})
    return metrics, (res.stats if return_stats else None)


def _raw_objectives(res) -> dict:
    """The objectives of an evaluation result before the verdict made them inf."""
    return verdicts.objective_values(res.nrmse, res.unassessable, res.nllh)


def _params_finite(model) -> bool:
    for name in (
        "weights_",
        "fields_",
        "gamma_plus_",
        "gamma_minus_",
        "theta_plus_",
        "theta_minus_",
    ):
        a = getattr(model, name, None)
        if a is not None and not np.all(np.isfinite(np.asarray(a))):
            return False
    return True


def _node() -> tuple[str, str]:
    import ray

    try:
        ip = ray.util.get_node_ip_address()
        node_id = ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - outside Ray
        return socket.gethostname(), ""
    return ip, node_id


def _write_model_file(
    model, dataset, stats, metrics: dict, trial_id: str, experiment_dir: str
) -> str:
    """Save the model (with /units and /evaluation) as <experiment_dir>/models/<trial_id>.h5."""
    import h5py

    with tempfile.TemporaryDirectory(prefix="raysearch-model-") as tmp:
        local = os.path.join(tmp, f"{trial_id}.h5")
        model.save(local, dataset=dataset)
        with h5py.File(local, "a") as f:
            g = f.require_group("evaluation")
            for k, v in metrics.items():
                if isinstance(v, (bool, np.bool_)):
                    g.attrs[k] = bool(v)
                elif isinstance(v, (int, float, np.integer, np.floating)):
                    g.attrs[k] = float(v) if not isinstance(v, (int, np.integer)) else int(v)
                elif isinstance(v, str):
                    g.attrs[k] = v
            for stat, parts in (stats or {}).items():
                sg = g.require_group(stat)
                for part, arr in parts.items():
                    sg.create_dataset(part, data=np.asarray(arr))
        if "://" in experiment_dir:
            import pyarrow.fs as pafs

            fs, root = pafs.FileSystem.from_uri(experiment_dir)
            fs.create_dir(f"{root}/models", recursive=True)
            dest = f"{root}/models/{trial_id}.h5"
            pafs.copy_files(local, dest, destination_filesystem=fs)
            return f"{experiment_dir.rstrip('/')}/models/{trial_id}.h5"
        models = os.path.join(experiment_dir, "models")
        os.makedirs(models, exist_ok=True)
        dest = os.path.join(models, f"{trial_id}.h5")
        part = dest + ".part"
        shutil.copyfile(local, part)
        os.replace(part, dest)
        return dest


def _folder_checkpoints(filesystem, folder: str) -> list:
    """The ``checkpoint_NNNNNN`` folders of a trial folder, newest first (``ray.tune.Checkpoint``
    objects); empty when the folder is missing or unreadable."""
    from pyarrow import fs as pafs
    from ray import tune

    try:
        infos = filesystem.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []
    paths = sorted(
        (
            info.path
            for info in infos
            if info.type == pafs.FileType.Directory
            and re.fullmatch(r"checkpoint_\d+", posixpath.basename(info.path))
        ),
        reverse=True,
    )
    return [tune.Checkpoint(path=p, filesystem=filesystem) for p in paths]


def _checkpoint_candidates(ckpt) -> list:
    """Tune's checkpoint first, then the other ``checkpoint_NNNNNN`` folders of the same trial,
    newest first (as ``ray.tune.Checkpoint`` objects on the same filesystem)."""
    parent = posixpath.dirname(ckpt.path.rstrip("/"))
    return [ckpt] + [
        c
        for c in _folder_checkpoints(ckpt.filesystem, parent)
        if c.path.rstrip("/") != ckpt.path.rstrip("/")
    ]


def resume_from_folder(filesystem, folder: str) -> tuple[str, dict] | None:
    """The newest complete checkpoint in a trial's own folder, as :func:`restore_checkpoint`.

    For a trial that Tune starts without a checkpoint although it has run before: a driver that
    died before its experiment state recorded the trial's first checkpoint leaves such a trial.
    A new trial's folder has no checkpoint, so this is ``None`` for it.
    """
    for cand in _folder_checkpoints(filesystem, folder):
        loaded = load_checkpoint_dir(cand)
        if loaded is not None:
            logger.warning(
                "Tune restarted this trial without a checkpoint, but its folder has "
                "one: resuming from %s",
                cand.path,
            )
            return loaded
    return None


def load_checkpoint_dir(ckpt) -> tuple[str, dict] | None:
    """Copy ``ckpt`` to a new local folder and check it is complete; return ``(folder, progress)``
    or ``None`` (nothing left behind) when it is missing, half-copied or unreadable."""
    from raysearch.crbm.io import read_checkpoint
    from raysearch.errors import RaysearchError

    d = tempfile.mkdtemp(prefix="raysearch-resume-")
    try:
        ckpt.to_directory(d)
        with open(os.path.join(d, "progress.json")) as fh:
            saved = json.load(fh)
        int(saved["updates"]), float(saved["seconds"])
        read_checkpoint(os.path.join(d, CHECKPOINT_FILE))
    except (OSError, ValueError, KeyError, TypeError, RaysearchError) as exc:
        shutil.rmtree(d, ignore_errors=True)
        logger.warning("checkpoint %s is not usable (%s)", ckpt.path, exc)
        return None
    return d, saved


def restore_checkpoint(ckpt) -> tuple[str, dict] | None:
    """Copy a usable checkpoint of this trial to a local folder; return ``(folder, progress)``.

    ``ckpt`` is the checkpoint Tune restarts the trial from. When it is incomplete (a worker
    killed while copying it to storage), the newest complete checkpoint in the trial's folder is
    used instead: resuming is exact, so the fit still ends with the same parameters. ``None``
    when no complete checkpoint is left (the fit starts over, same seed, same result). (A
    checkpoint that is missing altogether never gets here - Tune refuses to restore from it; see
    ``raysearch.search.tuner.repair_checkpoints``.)
    """
    for i, cand in enumerate(_checkpoint_candidates(ckpt)):
        loaded = load_checkpoint_dir(cand)
        if loaded is not None:
            if i:
                logger.warning(
                    "Tune's checkpoint %s is missing or incomplete; resuming from %s instead",
                    ckpt.path,
                    cand.path,
                )
            return loaded
    logger.warning(
        "no usable checkpoint left for this trial (Tune named %s): starting the fit over", ckpt.path
    )
    return None


def crbm_trial(config: dict, datasets: dict | None = None, settings: dict | None = None) -> None:
    """Fit, evaluate, checkpoint and save one cRBM (a Tune function trainable).

    Parameters
    ----------
    config : dict
        Tune's trial config: ``lam`` (float), ``seed`` (int), ``recording`` (key of ``datasets``),
        ``n_hidden`` (int, optional; default from settings).
    datasets : dict[str, raysearch.data.preprocessing.Dataset]
        The preprocessed recordings, shared through the object store by ``tune.with_parameters``.
    settings : dict
        From :func:`trial_settings`.
    """
    import ray
    from ray import tune

    from raysearch.backend import get_backend
    from raysearch.crbm import CRBM
    from raysearch.search.monitoring import export_trial_metrics

    s = settings
    dataset = datasets[config["recording"]]
    n_hidden = int(config.get("n_hidden") or s["n_hidden"])
    backend_name = "cupy" if ray.get_gpu_ids() else "numpy"
    backend = get_backend(backend_name)
    if backend_name == "cupy" and 0 < float(s["gpu"]) < 1:
        # fractional GPUs are not memory-isolated: keep this trial to its share of the memory
        backend.xp.get_default_memory_pool().set_limit(fraction=float(s["gpu"]))
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    ip, node_id = _node()
    n_updates = int(s["n_updates"])
    every = int(s["report_every"])
    base = {
        "lam": float(config["lam"]),
        "seed": int(config["seed"]),
        "recording": config["recording"],
        "penalty": s["penalty"],
        "n_hidden": n_hidden,
        "node": ip,
        "node_id": node_id,
        "backend": backend_name,
    }

    model = CRBM(
        n_hidden=n_hidden,
        visible=dataset.visible,
        penalty=s["penalty"],
        lam=float(config["lam"]),
        seed=int(config["seed"]),
        backend=backend_name,
        **s["crbm"],
    )
    if backend_name == "numpy" and "n_jobs" not in s["crbm"]:
        # one chain thread per CPU the trial holds (Ray gives the worker that many BLAS threads);
        # like the seed, this is part of the result, and it is the same on every restart
        model.set_params(
            n_jobs=max(1, min(int(s.get("cpu", 1)), int(model.n_chains or model.batch_size)))
        )

    resume_dir, saved = None, None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        restored = restore_checkpoint(ckpt)
    else:
        try:
            storage = ctx.get_storage()
            restored = resume_from_folder(storage.storage_filesystem, storage.trial_fs_path)
        except (AttributeError, RuntimeError):  # no storage context (not under Tune's session)
            restored = None
    if restored is not None:
        resume_dir, saved = restored
    # eval_seconds: evaluations; callback_seconds: everything done inside fit's callbacks
    # (evaluation, checkpoint files, tune.report), so training alone is seconds - callback_seconds.
    # All three add up over restarts (kept in the checkpoint's progress.json).
    state = {
        "eval_seconds": 0.0,
        "callback_seconds": 0.0,
        "seconds_before": 0.0,
        "progress": None,
        "resumed_at": None,
    }

    def on_progress(progress: dict) -> None:
        state["progress"] = progress

    def on_boundary(fitting) -> None:
        # called by CRBM.fit at every K-update boundary with finite parameters, after the
        # progress callback; the final boundary is left to the final evaluation below
        progress = state["progress"]
        updates = int(progress["updates"])
        if updates >= n_updates:
            return
        t_cb = time.perf_counter()
        seconds = state["seconds_before"] + float(progress["seconds"])
        with tempfile.TemporaryDirectory(prefix="raysearch-ckpt-") as d:
            ckpt_path = os.path.join(d, CHECKPOINT_FILE)
            fitting.save_checkpoint(ckpt_path)
            with open(os.path.join(d, "progress.json"), "w") as fh:
                json.dump(
                    {
                        "updates": updates,
                        "seconds": seconds,
                        "eval_seconds": state["eval_seconds"],
                        "callback_seconds": state["callback_seconds"],
                    },
                    fh,
                )
            t0 = time.perf_counter()
            snapshot = fitting.snapshot()  # the frames fit holds: no new transfer
            metrics, _ = _evaluate(
                snapshot, dataset, s["eval_during"], s["eval_seed"], backend, final=False
            )
            state["eval_seconds"] += time.perf_counter() - t0
            row = (
                base
                | metrics
                | {
                    "updates": updates,
                    "seconds": seconds,
                    "eval_seconds": state["eval_seconds"],
                    "final": False,
                    "resumed_at": state["resumed_at"],
                    "model_path": "",
                }
            )
            export_trial_metrics(row, s["objective"])  # Ray metrics (search.monitoring)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(d))
        state["callback_seconds"] += time.perf_counter() - t_cb

    resume_from = None
    if resume_dir is not None:
        resume_from = os.path.join(resume_dir, CHECKPOINT_FILE)
        state["resumed_at"] = int(saved["updates"])
        state["seconds_before"] = float(saved["seconds"])
        state["eval_seconds"] = float(saved.get("eval_seconds", 0.0))
        state["callback_seconds"] = float(saved.get("callback_seconds", 0.0))
    try:
        try:
            model.fit(
                dataset,
                callback=on_progress,
                callback_every=every,
                checkpoint=on_boundary,
                resume_from=resume_from,
            )
        except _DIVERGENCE_ERRORS:
            model.diverged_ = True
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)

    t0 = time.perf_counter()
    metrics, stats = _evaluate(
        model, dataset, s["eval_final"], s["eval_seed"], backend, return_stats=True
    )
    state["eval_seconds"] += time.perf_counter() - t0
    updates = int(getattr(model, "n_updates_done_", n_updates))
    seconds = state["seconds_before"] + float(getattr(model, "fit_seconds_", math.nan))
    final = (
        base
        | metrics
        | {
            "updates": updates,
            "seconds": seconds,
            "eval_seconds": state["eval_seconds"],
            "train_seconds": seconds - state["callback_seconds"],
            "diverged": bool(getattr(model, "diverged_", False)),
            "diverged_reason": str(getattr(model, "diverged_reason_", "")),
            "resumed_at": state["resumed_at"],
        }
    )
    if final["diverged"] and not final["bad"]:  # pragma: no cover - evaluate says so first
        final = sanitize_metrics(final | {"bad": True, "bad_reason": "diverged"})
    if hasattr(dataset, "fish_dataset"):  # joint study: nRMSE per fish (issue 14)
        from raysearch.evaluation import per_fish_metrics

        final |= per_fish_metrics(model, dataset, s["eval_final"], s["eval_seed"], backend)
    try:
        path = _write_model_file(model, dataset, stats, final, trial_id, s["experiment_dir"])
    except _DIVERGENCE_ERRORS:  # pragma: no cover - a model too broken to save
        path = ""
    export_trial_metrics(final, s["objective"])
    tune.report(final | {"final": True, "model_path": path})
