"""Reading a study's results from its experiment directory, with no Ray running.

Only plain files are read: Tune's ``experiment_state-*.json`` (trial ids and statuses),
each trial's ``params.json`` and ``result.json`` (one JSON line per report), the ``study.yaml``
written by :func:`raysearch.search.run_study`, and the ``/evaluation`` group of the model files in
``models/``. Nothing is unpickled.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from raysearch import verdicts
from raysearch.errors import InputError
from raysearch.verdicts import DEFAULT_OBJECTIVE

METRIC_KEYS = verdicts.METRIC_COLUMNS
RMSE_KEYS = verdicts.RMSE_COLUMNS

__all__ = ["load_results", "pareto_mask", "COLUMNS"]

log = logging.getLogger(__name__)

COLUMNS = [
    "trial_id",
    "lam",
    "seed",
    "recording",
    "penalty",
    "n_hidden",
    "status",
    *verdicts.NRMSE_COLUMNS,
    "mean_nrmse",
    "max_nrmse",
    "bad",
    "bad_reason",
    "sparsity",
    "weight_density",
    "updates",
    "seconds",
    "node",
    "model_path",
]
_EXTRA = [
    "finished",
    "resumed_at",
    "eval_seconds",
    "train_seconds",
    "n_reports",
    "node_id",
    "trial_dir",
    "model_error",
    "max_criteria",
    verdicts.RECONSTRUCTION,
    *verdicts.OBJECTIVE_SE_COLUMNS,
    "weight_std",
    "weights_converged",
    "unassessable",
    "unassessable_reason",
    "unstable",
    "unstable_reason",
]
_TEXT = ("unassessable", "unassessable_reason", "unstable_reason")
# why a trial stopped early (raysearch.stability: diverged_reason "unstable: ..." for a Gaussian
# fit that stopped being normalisable, "non-finite parameters" otherwise)
_REASONS = ["diverged", "diverged_reason"]


def _per_fish_columns(last: dict) -> dict:
    """The per-fish metrics of a joint study's final report (``fish<f>_...``, ``bad_any_fish``)."""
    return {
        k: v
        for k, v in last.items()
        if k == "bad_any_fish" or (k.startswith("fish") and "nrmse" in k)
    }


def _read_json_lines(path: str, warn: bool = True) -> list[dict]:
    """The JSON objects of a JSON-lines file; a line that is not one (e.g. cut by a crash) is
    skipped with a warning naming the file and the line."""
    rows = []
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, start=1):
                line = raw.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    row = None
                if not isinstance(row, dict):
                    if warn:
                        log.warning(
                            "%s line %d is not a JSON report (corrupt or cut short); skipped it",
                            path,
                            number,
                        )
                    continue
                rows.append(row)
    except FileNotFoundError:
        pass
    return rows


_STATE_NAME = re.compile(r"experiment_state-(\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)\.json$")


def _state_files(exp_dir: Path) -> list[str]:
    """Tune's ``experiment_state-<session start>.json`` files, newest session first.

    Ordered by the session start time in the file name (what ``Tuner.restore`` itself uses), not
    by modification time: at the end of a resumed run Tune uploads both the old session's file
    and the new one, milliseconds apart and in no fixed order.
    """
    files = glob.glob(str(exp_dir / "experiment_state-*.json"))

    def key(f):
        m = _STATE_NAME.search(os.path.basename(f))
        return (m is not None, m.group(1) if m else "", os.path.basename(f))

    return sorted(files, key=key, reverse=True)


def _read_state(path: str) -> dict | None:
    try:
        with open(path, "rb") as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        log.warning("%s is not readable Tune experiment state (%s); using an older one", path, exc)
        return None
    if not isinstance(state, dict) or not isinstance(state.get("trial_data"), list):
        log.warning("%s holds no trial_data; using an older experiment state", path)
        return None
    return state


def _trial_states(exp_dir: Path) -> dict[str, dict]:
    """trial_id -> {status, logdir, config} from the newest experiment_state file.

    Newest = latest session start in the file name (as ``Tuner.restore`` chooses); an
    unreadable file is skipped with a warning.
    """
    states = [(f, st) for f in _state_files(exp_dir) if (st := _read_state(f)) is not None]
    if not states:
        return {}
    state = states[0][1]
    out = {}
    for entry in state.get("trial_data", []):
        info = entry[0]
        info = json.loads(info) if isinstance(info, str) else info
        try:
            config = json.loads(info.get("config", "{}"))
        except (TypeError, json.JSONDecodeError):
            config = {}
        out[info["trial_id"]] = {
            "status": info.get("status"),
            "logdir": info.get("relative_logdir"),
            "config": config,
        }
    return out


def _trial_reports(tdir: Path) -> list[dict]:
    """A trial's reports in order: those kept before resumes (``result.pre-resume-<k>.json``,
    written by the resume when Tune restarted the trial without a recorded checkpoint) then
    ``result.json``. Where a later file restarts at or below an earlier file's updates (the trial
    resumed from an older checkpoint), the earlier file's rows from there on are dropped."""

    def resume_number(p: Path) -> int:
        k = p.stem.rsplit("-", 1)[-1]
        return int(k) if k.isdigit() else 0

    kept = sorted(tdir.glob("result.pre-resume-*.json"), key=resume_number)
    parts = [_read_json_lines(str(p)) for p in kept] + [_read_json_lines(str(tdir / "result.json"))]
    rows: list[dict] = []
    for part in parts:
        if part and rows and part[0].get("updates") is not None:
            first = part[0]["updates"]
            rows = [r for r in rows if r.get("updates") is None or r["updates"] < first]
        rows.extend(part)
    return rows


def _trial_dirs(exp_dir: Path) -> dict[str, Path]:
    """trial_id -> trial directory, found from each trial's first result line or its dir name."""
    out = {}
    for params in exp_dir.glob("*/params.json"):
        d = params.parent
        rows = _read_json_lines(str(d / "result.json"), warn=False)
        if rows and "trial_id" in rows[0]:
            out[rows[0]["trial_id"]] = d
        else:  # <trainable>_<trialid>_<n>_...: the id is "<run>_<index>"
            parts = d.name.split("_")
            for i in range(len(parts) - 1):
                if len(parts[i]) == 5 and parts[i + 1].isdigit() and len(parts[i + 1]) == 5:
                    out.setdefault(f"{parts[i]}_{parts[i + 1]}", d)
                    break
    return out


def _float(v) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _model_metrics(path: Path) -> tuple[dict | None, str | None]:
    """``(metrics, None)`` from a model file's /evaluation attributes, ``(None, None)`` when it has
    none yet, or ``(None, reason)`` when the file cannot be read as a raysearch model file."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return None, "not an HDF5 file (garbage, a pickle or another format)"
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") not in ("raysearch-crbm", b"raysearch-crbm"):
                return None, "an HDF5 file but not a raysearch model file"
            if "weights" not in f:
                return None, "model file without /weights (incomplete)"
            if "evaluation" not in f:
                return None, None
            return {
                k: (v.item() if hasattr(v, "item") else v) for k, v in f["evaluation"].attrs.items()
            }, None
    except Exception as exc:  # noqa: BLE001 - h5py raises several types on corrupt files
        return None, f"unreadable ({type(exc).__name__}: {exc}); truncated or corrupt"


def pareto_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-dominated points when minimising both ``a`` and ``b`` (shape (n,) each).

    Non-finite points are never on the front.
    """
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    ok = np.isfinite(a) & np.isfinite(b)
    mask = np.zeros(len(a), bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (a <= a[i]) & (b <= b[i]) & ((a < a[i]) | (b < b[i]))
        mask[i] = not dominated.any()
    return mask


def _study(exp_dir: Path) -> dict:
    """The experiment's study.yaml as a dict; {} with a warning when it is unreadable or corrupt
    (the trials are read without it: penalty, default n_hidden and the objective are then
    unknown or default)."""
    p = exp_dir / "study.yaml"
    if not p.is_file():
        return {}
    try:
        data = yaml.safe_load(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        log.warning(
            "%s is unreadable or corrupt (%s); reading the trials without it",
            p,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        log.warning("%s does not hold a study (a mapping); reading the trials without it", p)
        return {}
    for key in ("search", "model"):
        if key in data and not isinstance(data[key], dict):
            log.warning("%s: '%s' is not a mapping (corrupt file); ignoring it", p, key)
            data = {**data, key: {}}
    objective = (data.get("search") or {}).get("objective")
    if objective is not None and objective not in ("mean_nrmse", "max_nrmse"):
        log.warning(
            "%s: unknown search.objective %r (corrupt file); using %s",
            p,
            objective,
            DEFAULT_OBJECTIVE,
        )
        data = {**data, "search": {k: v for k, v in data["search"].items() if k != "objective"}}
    return data


def load_results(path: str | os.PathLike, history: bool = False) -> pd.DataFrame:
    """The trials of a study as a DataFrame, read from its experiment directory alone.

    Parameters
    ----------
    path : path
        The experiment directory (``<storage_path>/<name>``).
    history : bool
        False: one row per trial (its final metrics when it finished, else its last report).
        True: one row per report (``final`` marks the row written after the final evaluation).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS` (trial_id, lam, seed, recording, penalty, n_hidden, status,
        nrmse_v..nrmse_hh, mean_nrmse, max_nrmse, bad, bad_reason, sparsity, weight_density,
        updates, seconds, node, model_path), then finished, resumed_at, eval_seconds,
        train_seconds (fit seconds without the in-fit evaluations and checkpoints), n_reports,
        node_id, trial_dir, max_criteria, nllh, the objectives' noise (``mean_nrmse_se``,
        ``max_nrmse_se``, ``max_criteria_se``), weight_std, weights_converged, unassessable,
        unassessable_reason, unstable, unstable_reason (see :mod:`raysearch.verdicts`; the
        objectives of a bad fit are inf, and empty fits of older studies are marked bad), the
        parts of each nRMSE (``rmse_model_v`` ... ``rmse_shuf_hh``), ``diverged`` and
        ``diverged_reason`` (why the fit stopped early, :mod:`raysearch.stability`), and
        ``pareto`` for a two-objective study. ``finished`` is True when the
        trial wrote its model file (final evaluation done); a trial stopped early by ASHA is
        TERMINATED but not finished, and its row holds its last (intermediate) report. With history, also
        training_iteration, final and timestamp. ``df.attrs["study"]`` holds the study dict.
    """
    exp_dir = Path(path)
    if not exp_dir.is_dir():
        raise InputError(
            f"{exp_dir} is not a directory; give the experiment directory "
            "(<storage_path>/<study name>) that `raysearch run` printed"
        )
    study = _study(exp_dir)
    states = _trial_states(exp_dir)
    dirs = _trial_dirs(exp_dir)
    if not states and not dirs:
        raise InputError(
            f"{exp_dir} holds no Ray Tune trials (no experiment_state-*.json and no "
            "trial directories); is it the experiment directory of a study?"
        )
    penalty = (study.get("search") or {}).get("penalty")
    default_hidden = (study.get("model") or {}).get("n_hidden")
    rows, hist = [], []
    for trial_id in sorted(set(states) | set(dirs)):
        st = states.get(trial_id, {})
        tdir = dirs.get(trial_id)
        if tdir is None and st.get("logdir"):
            cand = exp_dir / st["logdir"]
            tdir = cand if cand.is_dir() else None
        config = dict(st.get("config") or {})
        if not config and tdir is not None and (tdir / "params.json").is_file():
            config = json.loads((tdir / "params.json").read_text())
        reports = _trial_reports(tdir) if tdir is not None else []
        model_file = exp_dir / "models" / f"{trial_id}.h5"
        final, model_error = _model_metrics(model_file) if model_file.is_file() else (None, None)
        if model_error:
            log.warning("model file %s of trial %s is %s", model_file, trial_id, model_error)
        last = final if final is not None else (reports[-1] if reports else {})
        row = {
            "trial_id": trial_id,
            "lam": config.get("lam", last.get("lam")),
            "seed": config.get("seed", last.get("seed")),
            "recording": config.get("recording", last.get("recording")),
            "penalty": last.get("penalty", penalty),
            "n_hidden": config.get("n_hidden", last.get("n_hidden", default_hidden)),
            "status": st.get("status") or ("TERMINATED" if final is not None else "UNKNOWN"),
        }
        for k in METRIC_KEYS:
            row[k] = _float(last.get(k))
        row["bad"] = bool(last["bad"]) if "bad" in last else None
        row["bad_reason"] = last.get("bad_reason")
        row["unstable"] = last.get("unstable")
        row["weights_converged"] = last.get("weights_converged")
        for k in _TEXT:
            row[k] = last.get(k)
        row["updates"] = last.get("updates")
        row["seconds"] = last.get("seconds")
        row["node"] = last.get("node")
        row["model_path"] = str(model_file) if final is not None else None
        row["finished"] = final is not None
        row["resumed_at"] = last.get("resumed_at")
        row["eval_seconds"] = last.get("eval_seconds")
        row["train_seconds"] = last.get("train_seconds")
        row["n_reports"] = len(reports)
        row["node_id"] = last.get("node_id")
        row["trial_dir"] = str(tdir) if tdir is not None else None
        row["model_error"] = model_error
        for k in RMSE_KEYS:  # the parts of each nRMSE (NaN in older studies)
            row[k] = _float(last.get(k))
        row.update(_per_fish_columns(last))  # joint studies (issue 14)
        for k in _REASONS:  # None in older studies and in reports before the final
            row[k] = last.get(k)
        rows.append(row)
        for seq, r in enumerate(reports):
            h = {
                c: row[c]
                for c in ("trial_id", "lam", "seed", "recording", "penalty", "n_hidden", "status")
            }
            h["_seq"] = seq
            for k in METRIC_KEYS + (
                "bad",
                "bad_reason",
                "updates",
                "seconds",
                "node",
                "node_id",
                "final",
                "resumed_at",
                "training_iteration",
                "timestamp",
            ):
                h[k] = r.get(k)
            hist.append(h)
    if history:
        df = pd.DataFrame(hist)
        if len(df):
            # report order (a trial restarted by Tune counts training_iteration from 1 again)
            df = df.sort_values(["trial_id", "_seq"], kind="stable")
            df = df.drop(columns="_seq").reset_index(drop=True)
    else:
        cols = COLUMNS + _EXTRA + list(RMSE_KEYS) + _REASONS
        cols += sorted({k for r in rows for k in r} - set(cols))
        df = pd.DataFrame(rows, columns=cols)
        search = study.get("search") or {}
        if search.get("mode") == "multi":
            objective = search.get("objective", DEFAULT_OBJECTIVE)
            ok = verdicts.finished_mask(df) & verdicts.usable_mask(df, objective)
            a = np.where(ok, df[objective].to_numpy(float), np.inf)
            df["pareto"] = pareto_mask(a, df["weight_density"].to_numpy(float))
    if len(df) and "bad" in df:
        # one verdict everywhere: empty fits of older studies are bad, and every bad fit has a
        # reason (raysearch.verdicts)
        df["bad"] = df["bad"].astype("boolean")
        known = df["bad"].notna().to_numpy()
        flagged = verdicts.bad_mask(df)
        df.loc[known & flagged, "bad"] = True
        df["bad_reason"] = np.where(known, verdicts.bad_reasons(df).to_numpy(), None)
    for col in ("unstable", "weights_converged"):
        if col in df and len(df):
            df[col] = df[col].astype("boolean")
    df.attrs["study"] = study
    df.attrs["experiment_dir"] = str(exp_dir)
    return df
