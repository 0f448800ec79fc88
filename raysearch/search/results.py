"""Reading a study's results from its experiment directory, with no Ray running.

Only plain files are read: Tune's ``experiment_state-*.json`` (trial ids and statuses),
each trial's ``params.json`` and ``result.json`` (one JSON line per report), the ``study.yaml``
written by :func:`raysearch.search.run_study`, and the ``/evaluation`` group of the model files in
``models/``. Nothing is unpickled.
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from raysearch.errors import InputError
from raysearch.search.trial import METRIC_KEYS, RMSE_KEYS
from raysearch.selection import DEFAULT_OBJECTIVE

__all__ = ["load_results", "pareto_mask", "COLUMNS"]

COLUMNS = ["trial_id", "lam", "seed", "recording", "penalty", "n_hidden", "status",
           "nrmse_v", "nrmse_h", "nrmse_vh", "nrmse_vv", "nrmse_hh", "mean_nrmse", "max_nrmse",
           "bad", "sparsity", "weight_density", "updates", "seconds", "node", "model_path"]
_EXTRA = ["finished", "resumed_at", "eval_seconds", "train_seconds", "n_reports", "node_id", "trial_dir"]
# why a trial is bad beyond its nRMSEs (raysearch.stability): it stopped as diverged, or its
# Gaussian model is not normalisable
_REASONS = ["diverged", "diverged_reason", "unstable", "unstable_reason"]


def _read_json_lines(path: str) -> list[dict]:
    rows = []
    try:
        with open(path) as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a crash: ignore it
                    continue
    except FileNotFoundError:
        pass
    return rows


def _trial_states(exp_dir: Path) -> dict[str, dict]:
    """trial_id -> {status, logdir, config} from the newest experiment_state file."""
    files = sorted(glob.glob(str(exp_dir / "experiment_state-*.json")), key=os.path.getmtime)
    if not files:
        return {}
    with open(files[-1]) as fh:
        state = json.load(fh)
    out = {}
    for entry in state.get("trial_data", []):
        info = entry[0]
        info = json.loads(info) if isinstance(info, str) else info
        try:
            config = json.loads(info.get("config", "{}"))
        except (TypeError, json.JSONDecodeError):
            config = {}
        out[info["trial_id"]] = {"status": info.get("status"),
                                 "logdir": info.get("relative_logdir"), "config": config}
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
        rows = _read_json_lines(str(d / "result.json"))
        if rows and "trial_id" in rows[0]:
            out[rows[0]["trial_id"]] = d
        else:  # <trainable>_<trialid>_<n>_...: the id is "<run>_<index>"
            parts = d.name.split("_")
            for i in range(len(parts) - 1):
                if len(parts[i]) == 5 and parts[i + 1].isdigit() and len(parts[i + 1]) == 5:
                    out.setdefault(f"{parts[i]}_{parts[i + 1]}", d)
                    break
    return out


def _model_metrics(path: Path) -> dict | None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "evaluation" not in f:
                return None
            return {k: (v.item() if hasattr(v, "item") else v)
                    for k, v in f["evaluation"].attrs.items()}
    except OSError:
        return None


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
    p = exp_dir / "study.yaml"
    if p.is_file():
        return yaml.safe_load(p.read_text()) or {}
    return {}


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
        nrmse_v..nrmse_hh, mean_nrmse, max_nrmse, bad, sparsity, weight_density, updates,
        seconds, node, model_path), then finished, resumed_at, eval_seconds, train_seconds (fit
        seconds without the in-fit evaluations and checkpoints), n_reports, node_id,
        trial_dir, the parts of each nRMSE (``rmse_model_v`` ... ``rmse_shuf_hh``),
        ``diverged``, ``diverged_reason``, ``unstable``, ``unstable_reason`` (why a trial is bad
        beyond its nRMSEs, :mod:`raysearch.stability`; None where not reported), and
        ``pareto`` for a two-objective study. ``finished`` is True when the
        trial wrote its model file (final evaluation done); a trial stopped early by ASHA is
        TERMINATED but not finished, and its row holds its last (intermediate) report. With history, also
        training_iteration, final and timestamp. ``df.attrs["study"]`` holds the study dict.
    """
    exp_dir = Path(path)
    if not exp_dir.is_dir():
        raise InputError(f"{exp_dir} is not a directory; give the experiment directory "
                         "(<storage_path>/<study name>) that `raysearch run` printed")
    study = _study(exp_dir)
    states = _trial_states(exp_dir)
    dirs = _trial_dirs(exp_dir)
    if not states and not dirs:
        raise InputError(f"{exp_dir} holds no Ray Tune trials (no experiment_state-*.json and no "
                         "trial directories); is it the experiment directory of a study?")
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
        final = _model_metrics(model_file) if model_file.is_file() else None
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
            row[k] = float(last[k]) if last.get(k) is not None else math.nan
        row["bad"] = bool(last["bad"]) if "bad" in last else None
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
        for k in RMSE_KEYS:             # the parts of each nRMSE (NaN in older studies)
            row[k] = float(last[k]) if last.get(k) is not None else math.nan
        for k in _REASONS:              # None in older studies and in reports before the final
            row[k] = last.get(k)
        rows.append(row)
        for seq, r in enumerate(reports):
            h = {c: row[c] for c in ("trial_id", "lam", "seed", "recording", "penalty",
                                     "n_hidden", "status")}
            h["_seq"] = seq
            for k in METRIC_KEYS + ("bad", "updates", "seconds", "node", "node_id", "final",
                                    "resumed_at",
                                    "training_iteration", "timestamp"):
                h[k] = r.get(k)
            hist.append(h)
    if history:
        df = pd.DataFrame(hist)
        if len(df):
            # report order (a trial restarted by Tune counts training_iteration from 1 again)
            df = df.sort_values(["trial_id", "_seq"], kind="stable")
            df = df.drop(columns="_seq").reset_index(drop=True)
    else:
        df = pd.DataFrame(rows, columns=COLUMNS + _EXTRA + list(RMSE_KEYS) + _REASONS)
        search = study.get("search") or {}
        if search.get("mode") == "multi":
            objective = search.get("objective", DEFAULT_OBJECTIVE)
            ok = df["finished"] & ~df["bad"].fillna(True).astype(bool)
            a = np.where(ok, df[objective].to_numpy(float), np.inf)
            df["pareto"] = pareto_mask(a, df["weight_density"].to_numpy(float))
    for col in ("bad",):
        if col in df and len(df):
            df[col] = df[col].astype("boolean")
    df.attrs["study"] = study
    df.attrs["experiment_dir"] = str(exp_dir)
    return df
