"""Assembling, launching and resuming the Ray Tune experiment of a study.

Ray Tune does the orchestration (scheduling, resources, retries, checkpoints, storage, restore)
and Optuna the proposing; this module only translates a :class:`~raysearch.search.config.Study`
into a :class:`ray.tune.Tuner`:

* ``optuna``: ``OptunaSearch`` with a seeded ``TPESampler`` (from :mod:`raysearch.search.samplers`,
  Optuna's samplers made picklable) and an Optuna RDB storage
  (``sqlite:///<experiment>/optuna.db`` unless ``search.optuna_storage`` names another
  SQLAlchemy URL), so ``optuna.load_study(study_name=<name>, storage=...)`` opens it later;
* ``grid``: ``tune.grid_search`` over λ x seeds x recordings (x n_hidden);
* ``multi``: ``OptunaSearch`` with two objectives (the objective and ``weight_density``) and a
  seeded ``NSGAIISampler``;
* optional ``ASHAScheduler`` on the intermediate objective (time axis: updates).

Connecting to Ray: an already initialised Ray is used as is; ``address`` (or ``RAY_ADDRESS``, which
``ray job submit`` sets) joins a cluster; otherwise a local instance is started with every port and
the dashboard on 127.0.0.1 and Ray's default token authentication left as it is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raysearch.errors import ConfigError, InputError
from raysearch.search.config import Study, load_experiment_study, load_study, study_from_dict

__all__ = [
    "run_study",
    "resume_study",
    "prepare_datasets",
    "build_tuner",
    "connect_ray",
    "experiment_dir",
    "optuna_storage_url",
    "StudyRun",
]

log = logging.getLogger(__name__)

STUDY_FILE = "study.yaml"


@dataclass
class StudyRun:
    """What :func:`run_study` / :func:`resume_study` return."""

    experiment_dir: str
    results: Any  # pandas.DataFrame from load_results
    num_errors: int
    dashboard_url: str | None = None
    #: trials the study asked for that did not end (still RUNNING/PENDING/PAUSED in the saved
    #: state, or never started) - non-zero when the run was interrupted (e.g. Ctrl+C / SIGINT)
    num_unfinished: int = 0

    @property
    def complete(self) -> bool:
        """True when every trial of the study ended (TERMINATED or ERROR)."""
        return self.num_unfinished == 0


def _is_uri(path: str) -> bool:
    return "://" in str(path)


def experiment_dir(study: Study, storage: str | None = None, name: str | None = None) -> str:
    """Absolute path (or URI) of ``<storage_path>/<name>``."""
    root = storage or study.run.storage_path
    name = name or study.name
    if _is_uri(root):
        return f"{root.rstrip('/')}/{name}"
    return str(Path(root).expanduser().resolve() / name)


def optuna_storage_url(study: Study, exp_dir: str) -> str:
    """The Optuna RDB storage URL: ``search.optuna_storage`` or SQLite in the experiment dir."""
    if study.search.optuna_storage:
        return study.search.optuna_storage
    if _is_uri(exp_dir):
        raise ConfigError(
            f"the experiment directory {exp_dir} is not a local path, so the default "
            "SQLite Optuna storage cannot live there; set search.optuna_storage to "
            "an SQLAlchemy URL (e.g. postgresql://user@host/db)"
        )
    return f"sqlite:///{Path(exp_dir) / 'optuna.db'}"


def prepare_datasets(study: Study) -> dict[str, Any]:
    """Read and preprocess every recording of the study once (in the driver).

    Returns
    -------
    dict[str, raysearch.data.preprocessing.Dataset]
        Keyed by :attr:`RecordingSpec.key`.
    """
    from raysearch.data.preprocessing import check_trainable, preprocess
    from raysearch.data.recordings import load_recording
    from raysearch.data.synthetic import make_synthetic_recording

    pre = study.preprocessing.model_dump()
    if isinstance(pre["test_segments"], list):
        pre["test_segments"] = tuple(pre["test_segments"])
    out = {}
    recs = []
    for spec in study.recordings:
        if spec.synthetic is not None:
            rec, _truth = make_synthetic_recording(**spec.synthetic.model_dump(exclude_none=True))
        else:
            # read only the signal the study uses (a whole-fish array is ~1 GB)
            rec = load_recording(
                spec.path,
                signals=(pre["signal"],),
                drop_unlabelled=spec.drop_unlabelled,
                on_nonfinite=spec.on_nonfinite,
            )
        if study.joint:
            recs.append(rec)
            continue
        out[spec.key] = preprocess(rec, **pre)
        check_trainable(out[spec.key])
    if study.joint:
        out = _joint_study_dataset(study, recs, pre)
        for ds in out.values():
            check_trainable(ds)
    return out


def _joint_study_dataset(study, recordings, pre: dict) -> dict:
    """The datasets of a ``joint: true`` study: ``{"joint": JointDataset}`` built with the study's
    preprocessing settings (``voxel_um`` is the common grid, ``joint_min_fish`` the
    ``min_fish``). Fish names are the recording keys."""
    from raysearch.data.cohort import joint_dataset
    from raysearch.search.config import JOINT_KEY

    pre = dict(pre)
    voxel_um = pre.pop("voxel_um")
    transform = pre.pop("transform")
    signal = pre.pop("signal")
    if transform == "auto":
        transform = "zscore" if signal == "dff" else "binarize"
    jd = joint_dataset(
        recordings,
        voxel_um,
        min_fish=study.joint_min_fish,
        signal=signal,
        transform=transform,
        names=[r.key for r in study.recordings],
        **pre,
    )
    return {JOINT_KEY: jd}


def _space(study: Study):
    """Tune param_space: searched keys as Tune domains, the rest constants."""
    from ray import tune

    s = study.search
    keys = study.recording_keys
    hidden = s.n_hidden or [study.model.n_hidden]
    if s.mode == "grid":
        return {
            "lam": tune.grid_search(list(s.lam)),
            "seed": tune.grid_search(list(s.seeds)),
            "recording": tune.grid_search(keys),
            "n_hidden": tune.grid_search(hidden),
        }

    def choice(values):
        return tune.choice(list(values)) if len(values) > 1 else values[0]

    return {
        "lam": tune.loguniform(s.lam.low, s.lam.high),
        "seed": choice(s.seeds),
        "recording": choice(keys),
        "n_hidden": choice(hidden),
    }


def _points(study: Study) -> list[dict] | None:
    """points_to_evaluate with every searched key filled in (first value as default)."""
    s = study.search
    if not s.points_to_evaluate:
        return None
    searched = {"lam": None}
    if len(s.seeds) > 1:
        searched["seed"] = s.seeds[0]
    if len(study.recordings) > 1:
        searched["recording"] = study.recording_keys[0]
    if s.n_hidden and len(s.n_hidden) > 1:
        searched["n_hidden"] = s.n_hidden[0]
    return [{k: p.get(k, default) for k, default in searched.items()} for p in s.points_to_evaluate]


def build_tuner(study: Study, datasets: dict, exp_dir: str, restore: bool = False):
    """The ``tune.Tuner`` for a study (or the restored one when ``restore``).

    Parameters
    ----------
    study : Study
    datasets : dict[str, Dataset]
        From :func:`prepare_datasets`; shared with the trials via ``tune.with_parameters``.
    exp_dir : str
        ``<storage_path>/<name>``.
    restore : bool
        Restore the experiment in ``exp_dir`` (``Tuner.restore(resume_errored=True)``).
    """
    from ray import tune

    from raysearch.search.monitoring import named_trainable
    from raysearch.search.trial import crbm_trial, trial_settings

    # named_trainable: the actor class "crbm_trial", each actor labelled with its trial and λ
    trainable = named_trainable(
        tune.with_resources(
            tune.with_parameters(
                crbm_trial, datasets=datasets, settings=trial_settings(study, exp_dir)
            ),
            {"cpu": study.resources.cpu, "gpu": study.resources.gpu, **study.resources.custom},
        )
    )
    if restore:
        return tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)

    s = study.search
    metric = s.objective
    search_alg = scheduler = None
    num_samples = s.num_samples
    tc_metric, tc_mode = metric, "min"
    if s.mode in ("optuna", "multi"):
        import optuna

        from raysearch.search.monitoring import MonitoredOptunaSearch as OptunaSearch
        from raysearch.search.samplers import make_sampler

        storage = optuna.storages.RDBStorage(optuna_storage_url(study, exp_dir))
        sampler = make_sampler(s.mode, s.sampler_seed)
        if s.mode == "optuna":
            search_alg = OptunaSearch(
                metric=metric,
                mode="min",
                sampler=sampler,
                storage=storage,
                study_name=study.name,
                points_to_evaluate=_points(study),
            )
        else:
            search_alg = OptunaSearch(
                metric=[metric, "weight_density"],
                mode=["min", "min"],
                sampler=sampler,
                storage=storage,
                study_name=study.name,
                points_to_evaluate=_points(study),
            )
            tc_metric = tc_mode = None
    else:
        num_samples = 1
    if s.asha is not None:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="updates",
            max_t=study.model.n_updates,
            grace_period=s.asha.grace_updates,
            reduction_factor=s.asha.reduction_factor,
        )
    parent, name = _split_exp_dir(exp_dir)
    from raysearch.search import monitoring

    return tune.Tuner(
        trainable,
        param_space=_space(study),
        tune_config=tune.TuneConfig(
            metric=tc_metric,
            mode=tc_mode,
            num_samples=num_samples,
            max_concurrent_trials=s.max_concurrent,
            search_alg=search_alg,
            scheduler=scheduler,
            reuse_actors=study.run.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=parent,
            verbose=study.run.verbose,
            # console and loggers: raysearch.search.monitoring
            progress_reporter=monitoring.progress_reporter(metric, multi=s.mode == "multi"),
            callbacks=monitoring.console_callbacks(metric),
            failure_config=tune.FailureConfig(max_failures=study.run.max_failures),
            # num_to_keep makes Tune snapshot the experiment state whenever a trial has written
            # that many checkpoints, so a restore after a driver crash knows every trial's
            # latest checkpoint.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=study.run.checkpoint_num_to_keep),
        ),
    )


def _split_exp_dir(exp_dir: str) -> tuple[str, str]:
    exp_dir = exp_dir.rstrip("/")
    parent, _, name = exp_dir.rpartition("/")
    return parent, name


def connect_ray(
    address: str | None = None, num_cpus: int | None = None, metadata: dict[str, str] | None = None
):
    """Initialise Ray for a study; return (started_here: bool, dashboard_url or None).

    ``metadata`` (:func:`raysearch.search.monitoring.job_metadata`) becomes the driver's Ray job
    metadata, which the dashboard's Jobs page shows (``job_name`` as the job's name).

    * Ray already initialised: used as is.
    * ``address`` given, or ``RAY_ADDRESS`` set (as under ``ray job submit``): join that cluster.
    * Otherwise start a local instance: node IP, every Ray port and the dashboard on 127.0.0.1.
      Ray's token authentication is left at its default (on for a new local instance).
    """
    import ray

    if ray.is_initialized():
        return False, None
    job_config = ray.job_config.JobConfig(metadata=dict(metadata)) if metadata else None
    if address is not None or os.environ.get("RAY_ADDRESS"):
        ctx = ray.init(address=address, job_config=job_config)
    else:
        with _loopback_only():
            ctx = ray.init(
                address="local",
                num_cpus=num_cpus,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                job_config=job_config,
            )
    url = getattr(ctx, "dashboard_url", None)
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return True, url


@contextlib.contextmanager
def _loopback_only():
    """Make a new local Ray instance use 127.0.0.1 as its node address.

    Ray replaces 127.0.0.1 by the machine's outward address unless it believes clusters are off
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); with them off, the GCS, raylet, workers and agents
    listen on loopback only. The switch is read at import (``ray_constants``) and inherited by the
    processes Ray starts, so it is set in both places while Ray starts and removed afterwards, so
    that later subprocesses (e.g. ``ray start`` worker nodes) are not affected.
    """
    from ray._private import ray_constants

    var = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    old_env, old_const = os.environ.get(var), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[var] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_const
        if old_env is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old_env


def _job_metadata(study: Study, exp_dir: str) -> dict[str, str]:
    from raysearch.search.monitoring import job_metadata

    return job_metadata(study, exp_dir)


def _warn_missing_gpus(study: Study) -> None:
    import ray

    if study.resources.gpu > 0 and not ray.cluster_resources().get("GPU"):
        log.warning(
            "the study asks for %s GPU per trial but the Ray cluster has no GPU now; "
            "trials stay PENDING until one joins (set resources.gpu: 0 to run on CPUs)",
            study.resources.gpu,
        )


def _write_study(study: Study, exp_dir: str) -> None:
    text = study.to_yaml()
    if _is_uri(exp_dir):
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(exp_dir)
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(f"{root}/{STUDY_FILE}") as fh:
            fh.write(text.encode())
        return
    from raysearch.crbm.io import umask_mode

    os.makedirs(exp_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=exp_dir, prefix=".study-", suffix=".yaml")
    os.fchmod(fd, umask_mode())  # mkstemp makes it 0600; a new file follows the umask
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, os.path.join(exp_dir, STUDY_FILE))


def _set_tune_env() -> None:
    # Frequent checkpoints force experiment snapshots by design (see build_tuner); do not warn.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    from raysearch.search.monitoring import use_legacy_console

    use_legacy_console()


def expected_trials(study: Study) -> int:
    """How many trials the study runs: the grid's size, or ``search.num_samples``."""
    s = study.search
    if s.mode == "grid":
        return len(s.lam) * len(s.seeds) * len(study.recordings) * len(s.n_hidden or [0])
    return s.num_samples


def _unfinished(study: Study, result_grid, df) -> int:
    """Trials that did not end: not TERMINATED/ERROR in the saved state, plus never created."""
    ended = ("TERMINATED", "ERROR")
    if "status" in getattr(df, "columns", ()):
        statuses = df["status"].astype(str).tolist()
    else:
        statuses = []
        for r in result_grid:
            statuses.append("ERROR" if r.error is not None else "TERMINATED")
    open_ = sum(1 for st in statuses if st not in ended)
    return open_ + max(0, expected_trials(study) - len(statuses))


def _finish(exp_dir: str, result_grid, dashboard_url, study: Study) -> StudyRun:
    from raysearch.search.results import load_results

    df = load_results(exp_dir) if not _is_uri(exp_dir) else result_grid.get_dataframe()
    return StudyRun(
        experiment_dir=exp_dir,
        results=df,
        num_errors=result_grid.num_errors,
        dashboard_url=dashboard_url,
        num_unfinished=_unfinished(study, result_grid, df),
    )


def run_study(
    study: Study | str | os.PathLike | None = None,
    address: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    on_connect=None,
) -> StudyRun:
    """Run a study with Ray Tune and return its results.

    Parameters
    ----------
    study : Study or path, optional
        A validated study or a study YAML file; None runs the packaged quickstart.
    address : str, optional
        Ray cluster to join (``auto``, ``ray://host:10001``, ``host:6379``); None: ``RAY_ADDRESS``
        if set, else a new local instance on 127.0.0.1.
    storage : str, optional
        Storage path or URI overriding ``run.storage_path``. A multi-node cluster needs storage
        every node can reach (a shared filesystem or ``s3://``/``gs://``).
    name : str, optional
        Experiment name overriding ``name`` (the experiment dir is ``<storage>/<name>``).
    on_connect : callable, optional
        Called with the dashboard URL (or None) once Ray is up, before the search starts.

    Returns
    -------
    StudyRun
    """
    if not isinstance(study, Study):
        study = load_study(study)
    exp_dir = experiment_dir(study, storage, name)
    if not _is_uri(exp_dir) and any(Path(exp_dir).glob("experiment_state-*.json")):
        raise ConfigError(
            f"the experiment directory {exp_dir} already holds a study; continue it "
            f"with `raysearch resume {exp_dir}` or choose another --name"
        )
    if study.search.mode != "grid":
        optuna_storage_url(study, exp_dir)  # a URI storage needs search.optuna_storage: say so now
    _set_tune_env()
    datasets = prepare_datasets(study)
    started, url = connect_ray(address, metadata=_job_metadata(study, exp_dir))
    if on_connect is not None:
        on_connect(url)
    _warn_missing_gpus(study)
    try:
        _write_study(study, exp_dir)
        tuner = build_tuner(study, datasets, exp_dir)
        grid = tuner.fit()
        return _finish(exp_dir, grid, url, study)
    finally:
        if started:
            import ray

            ray.shutdown()


def repair_checkpoints(exp_dir: str) -> list[str]:
    """Before a restore: give every unfinished trial whose checkpoint is gone a usable one.

    Tune deletes a trial's older checkpoint (``CheckpointConfig(num_to_keep)``) as soon as a newer
    one arrives, and snapshots its experiment state a moment later. A driver killed in between
    leaves a state that names a deleted checkpoint, and Tune then fails that trial at every
    restart ("does not exist on storage anymore") instead of resuming it. For each such trial the
    newest complete checkpoint in its folder is copied to the path the state names (resuming is
    exact, so the trial continues from the newer state); with none left, a placeholder makes the
    trial start over. Returns one line per repaired trial, also logged as warnings.
    """
    import pyarrow.fs as pafs
    from ray.tune import ExperimentAnalysis

    from raysearch.search.trial import _checkpoint_candidates, load_checkpoint_dir

    notes = []
    try:
        trials = ExperimentAnalysis(exp_dir).trials
    except Exception as exc:  # noqa: BLE001 - the repair must never be what stops a resume
        log.warning(
            "could not read the experiment state to check its checkpoints (%s); "
            "resuming without that check",
            exc,
        )
        return notes
    for trial in trials:
        ckpt = trial.checkpoint
        if trial.status == "TERMINATED":
            continue
        if ckpt is None:
            note = _keep_reports(trial)
            if note:
                notes.append(note)
            continue
        if ckpt.filesystem.get_file_info(ckpt.path).type != pafs.FileType.NotFound:
            continue  # there (if it is incomplete, the trial falls back by itself)
        for cand in _checkpoint_candidates(ckpt)[1:]:
            loaded = load_checkpoint_dir(cand)
            if loaded is None:
                continue
            local, saved = loaded
            try:
                ckpt.filesystem.create_dir(ckpt.path, recursive=True)
                pafs.copy_files(
                    local,
                    ckpt.path,
                    source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=ckpt.filesystem,
                )
            finally:
                shutil.rmtree(local, ignore_errors=True)
            notes.append(
                f"trial {trial.trial_id}: its checkpoint {ckpt.path} was deleted before "
                f"the driver stopped; restored it from {cand.path} "
                f"(update {saved['updates']})"
            )
            break
        else:
            # nothing to resume from: a placeholder lets Tune restart the trial, and the trial,
            # finding no complete checkpoint, fits from the start (same seed, same result)
            ckpt.filesystem.create_dir(ckpt.path, recursive=True)
            with ckpt.filesystem.open_output_stream(f"{ckpt.path}/LOST.txt") as fh:
                fh.write(
                    b"raysearch: this checkpoint was deleted before the driver stopped and "
                    b"no complete one was left; the trial was restarted from update 0\n"
                )
            notes.append(
                f"trial {trial.trial_id}: its checkpoint {ckpt.path} is gone and no "
                "complete one is left; the trial starts over"
            )
    for line in notes:
        log.warning("%s", line)
    return notes


def _keep_reports(trial) -> str | None:
    """Keep the reports of an unfinished trial that the experiment state records no checkpoint
    for (the driver died before the state recorded its first one).

    Tune restarts such a trial as new: it does not download the trial's ``result.json`` and
    later uploads a fresh one over it, while the trial itself resumes from the checkpoints in its
    folder (:func:`raysearch.search.trial.resume_from_folder`). The reports made before the stop
    are therefore copied to ``result.pre-resume-<k>.json`` beside it, which
    :func:`raysearch.search.results.load_results` reads back into the trial's history.
    """
    import pyarrow.fs as pafs

    storage = getattr(trial, "storage", None)
    try:
        if storage is not None:  # a Tune trial: its storage filesystem and path
            fs, root = storage.storage_filesystem, storage.trial_fs_path
        elif getattr(trial, "path", None):
            fs, root = pafs.LocalFileSystem(), str(trial.path)
        else:
            return None
        src = f"{root}/result.json"
        info = fs.get_file_info(src)
        if info.type != pafs.FileType.File or not info.size:
            return None
        k = 1
        while fs.get_file_info(f"{root}/result.pre-resume-{k}.json").type != pafs.FileType.NotFound:
            k += 1
        fs.copy_file(src, f"{root}/result.pre-resume-{k}.json")
    except Exception as exc:  # noqa: BLE001 - never what stops a resume
        log.warning(
            "could not keep the reports of trial %s before resuming (%s)", trial.trial_id, exc
        )
        return None
    return (
        f"trial {trial.trial_id}: no checkpoint recorded in the experiment state; kept its "
        f"reports so far in result.pre-resume-{k}.json"
    )


def resume_study(path: str | os.PathLike, address: str | None = None, on_connect=None) -> StudyRun:
    """Continue an interrupted study from its experiment directory.

    Finished trials are kept; trials that were running continue from their last checkpoint
    (``Tuner.restore(..., resume_errored=True)`` with the same trainable); the searcher goes on
    from its saved state until the trial budget is spent.
    """
    exp_dir = str(path)
    if not _is_uri(exp_dir):
        exp_dir = str(Path(exp_dir).expanduser().resolve())
        study_file = Path(exp_dir) / STUDY_FILE
        if not study_file.is_file():
            raise InputError(
                f"{exp_dir} has no {STUDY_FILE}; give the experiment directory that "
                "`raysearch run` created (<storage_path>/<name>)"
            )
        study = load_experiment_study(study_file)
    else:
        import pyarrow.fs as pafs
        import yaml

        fs, root = pafs.FileSystem.from_uri(exp_dir)
        with fs.open_input_stream(f"{root}/{STUDY_FILE}") as fh:
            raw = fh.read()
        try:
            data = yaml.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"{exp_dir}/{STUDY_FILE} is corrupt ({exc}); restore it from the "
                "study file the experiment was started with"
            ) from None
        study = study_from_dict(data, source=f"{exp_dir}/{STUDY_FILE}")
    _set_tune_env()
    datasets = prepare_datasets(study)
    started, url = connect_ray(address, metadata=_job_metadata(study, exp_dir))
    if on_connect is not None:
        on_connect(url)
    try:
        from ray import tune

        if not tune.Tuner.can_restore(exp_dir):
            raise InputError(
                f"{exp_dir} cannot be restored by Ray Tune (no experiment state); "
                "was the study started at all?"
            )
        repair_checkpoints(exp_dir)
        tuner = build_tuner(study, datasets, exp_dir, restore=True)
        grid = tuner.fit()
        return _finish(exp_dir, grid, url, study)
    finally:
        if started:
            import ray

            ray.shutdown()
