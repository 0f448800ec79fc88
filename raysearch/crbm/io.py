"""Model files and training checkpoints, in HDF5 (never pickle), written atomically.

Model file layout (``CRBM.save``)::

    /weights        (n_hidden, n_visible) float32
    /fields         (n_visible,)
    /gamma_plus /gamma_minus /theta_plus /theta_minus   (n_hidden,)
    /hidden_var     (n_hidden,)   c_mu = mean over training frames of Var(h_mu | v)
    /visible_gamma  (n_visible,)  gaussian visible units only
    attrs: format = "raysearch-crbm", format_version = 1, raysearch_version,
           every constructor setting (n_hidden, visible, penalty, lam, n_updates, batch_size,
           n_chains, n_gibbs, learning_rate, lr_final_ratio, decay_after, beta2, epsilon, seed,
           backend; a None setting is stored as the string "none"), settings_json (the same as
           JSON, authoritative on load), n_updates_done, diverged, fit_seconds, n_visible
    /units (optional, when saved with a Dataset):
        coords (n_visible, 3) float32 um, unit_region (n_visible,) int, n_neurons (n_visible,) int
        attrs: region_names (JSON list), source, signal, voxel_um ("none" if None)

Checkpoint layout (``CRBM.save_checkpoint``)::

    /params/<name>, /moments/<name>   one dataset per parameter (same names as above)
    /chains         (n_chains, n_visible) persistent chains
    attrs: format = "raysearch-crbm-checkpoint", update, settings_json, raysearch_version,
           data_fingerprint (:func:`data_fingerprint` of the training frames; "none" if unknown)

Files are written to a temporary file beside the target and renamed onto it; they get the
permissions an ordinary new file gets (0666 less the process umask), like the files Tune writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from raysearch.errors import InputError, RaysearchError, check_readable

MODEL_FORMAT = "raysearch-crbm"
CHECKPOINT_FORMAT = "raysearch-crbm-checkpoint"
FORMAT_VERSION = 1
HIDDEN = ("gamma_plus", "gamma_minus", "theta_plus", "theta_minus")
_ATTR = {
    "weights": "weights_",
    "fields": "fields_",
    "gamma_plus": "gamma_plus_",
    "gamma_minus": "gamma_minus_",
    "theta_plus": "theta_plus_",
    "theta_minus": "theta_minus_",
    "hidden_var": "hidden_var_",
    "visible_gamma": "gamma_",
}


def _version():
    from raysearch import __version__

    return __version__


def umask_mode() -> int:
    """The mode a new file gets from ``open()`` under the current umask (0o666 & ~umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_h5(path, write):
    """Call write(h5file) on a temporary file next to ``path``, then rename it onto ``path``.

    ``mkstemp`` creates the temporary file 0600; it is given the umask's mode before the rename.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, umask_mode())
        with h5py.File(tmp, "w") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _attr_value(v):
    return "none" if v is None else v


def save_model(model, path, dataset=None):
    """Write a fitted :class:`~raysearch.crbm.CRBM` to ``path`` (layout in the module docstring).

    Parameters
    ----------
    dataset : Dataset, optional
        Adds the /units group (coordinates, regions, neurons per unit) for the analyzer.
    """
    model._check_fitted()
    settings = model.get_params()
    N = model.weights_.shape[1]
    if dataset is not None and np.asarray(dataset.coords).shape[0] != N:
        raise InputError(
            f"the dataset has {np.asarray(dataset.coords).shape[0]} units but the "
            f"model {N} visible units; pass the dataset the model was fitted on"
        )

    def write(f):
        for name, attr in _ATTR.items():
            if hasattr(model, attr):
                f.create_dataset(name, data=np.asarray(getattr(model, attr), dtype=np.float32))
        f.attrs["format"] = MODEL_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["raysearch_version"] = _version()
        for k, v in settings.items():
            f.attrs[k] = _attr_value(v)
        f.attrs["settings_json"] = json.dumps(settings)
        f.attrs["n_updates_done"] = int(getattr(model, "n_updates_done_", 0))
        f.attrs["diverged"] = bool(getattr(model, "diverged_", False))
        f.attrs["diverged_reason"] = str(getattr(model, "diverged_reason_", ""))
        f.attrs["fit_seconds"] = float(getattr(model, "fit_seconds_", float("nan")))
        f.attrs["n_visible"] = int(N)
        if dataset is not None:
            g = f.create_group("units")
            g.create_dataset("coords", data=np.asarray(dataset.coords, dtype=np.float32))
            g.create_dataset("unit_region", data=np.asarray(dataset.unit_region, dtype=np.int64))
            g.create_dataset("n_neurons", data=np.asarray(dataset.n_neurons, dtype=np.int64))
            g.attrs["region_names"] = json.dumps(list(dataset.region_names))
            g.attrs["source"] = str(getattr(dataset, "source", ""))
            g.attrs["signal"] = str(getattr(dataset, "signal", ""))
            g.attrs["voxel_um"] = _attr_value(getattr(dataset, "voxel_um", None))

    return _atomic_h5(path, write)


def _what(fmt):
    return {
        MODEL_FORMAT: "raysearch model file",
        CHECKPOINT_FORMAT: "raysearch checkpoint file",
    }.get(fmt, f"{fmt} file")


def _open(path, expected):
    import h5py

    path = Path(path)
    check_readable(path, _what(expected))
    if not h5py.is_hdf5(path):
        raise InputError(f"{path} is not an HDF5 file, so not a {_what(expected)}")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            f"{path}: cannot be opened as HDF5, the file may be truncated or corrupt ({exc})"
        ) from None
    try:
        fmt = f.attrs.get("format")
    except Exception:  # noqa: BLE001 - a damaged attribute heap; reported below
        fmt = None
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != expected:
        f.close()
        raise InputError(
            f"{path} is an HDF5 file but not a {_what(expected)} "
            f"(attribute format={fmt!r}, expected {expected!r})"
        )
    return f


@contextlib.contextmanager
def _reading(path):
    """Turn what h5py raises on a damaged file (truncated, flipped bits) into an InputError."""
    try:
        yield
    except RaysearchError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"{path}: reading failed, the file may be truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from None


def load_model(path, cls=None):
    """Read a model file into a fitted CRBM; InputError with a clear message if it is not one."""
    with _reading(path):
        return _load_model(path, cls)


def _load_model(path, cls):
    if cls is None:
        from raysearch.crbm.estimator import CRBM as cls
    with _open(path, MODEL_FORMAT) as f:
        missing = [k for k in ("weights", "fields", *HIDDEN, "hidden_var") if k not in f]
        if missing:
            raise InputError(f"{path}: model file lacks dataset(s) {', '.join(missing)}")
        try:
            settings = json.loads(f.attrs["settings_json"])
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path}: unreadable settings_json attribute ({exc})") from None
        model = cls(**settings)
        W = np.asarray(f["weights"], dtype=np.float32)
        if W.ndim != 2:
            raise InputError(f"{path}: weights must be 2-D (n_hidden, n_visible), got {W.shape}")
        M, N = W.shape
        expect = {"fields": N, "hidden_var": M, **{k: M for k in HIDDEN}}
        if model.visible == "gaussian":
            if "visible_gamma" not in f:
                raise InputError(f"{path}: gaussian model file lacks dataset visible_gamma")
            expect["visible_gamma"] = N
        for k, n in expect.items():
            a = np.asarray(f[k], dtype=np.float32)
            if a.shape != (n,):
                raise InputError(f"{path}: dataset {k} has shape {a.shape}, expected ({n},)")
            setattr(model, _ATTR[k], a)
        model.weights_ = W
        model.n_visible_, model.n_hidden_ = N, M
        model.n_updates_done_ = int(f.attrs.get("n_updates_done", 0))
        model.diverged_ = bool(f.attrs.get("diverged", False))
        model.diverged_reason_ = str(f.attrs.get("diverged_reason", ""))
        model.fit_seconds_ = float(f.attrs.get("fit_seconds", float("nan")))
    return model


def load_units(path):
    """The /units group of a model file as a dict (coords, unit_region, n_neurons, region_names),
    or None when the model was saved without a dataset."""
    with _reading(path), _open(path, MODEL_FORMAT) as f:
        if "units" not in f:
            return None
        g = f["units"]
        return {
            "coords": np.asarray(g["coords"]),
            "unit_region": np.asarray(g["unit_region"]),
            "n_neurons": np.asarray(g["n_neurons"]),
            "region_names": json.loads(g.attrs["region_names"]),
        }


def data_fingerprint(X) -> str:
    """A fingerprint of training frames: SHA-256 over shape, dtype and every byte.

    Stored in checkpoints so that a resume on other data (e.g. another recording with the same
    number of neurons) is refused. Cost: one pass over the array (about 1.6 s for the 590 MB of a
    whole fish's training frames, 3850 x 40000 float32, on one CPU core); it is computed once per
    fit, only when the fit checkpoints or resumes.

    Parameters
    ----------
    X : ndarray (T, N)
        Host array (any dtype).

    Returns
    -------
    str
        ``"sha256:<hex>"``.
    """
    a = np.ascontiguousarray(X)
    h = hashlib.sha256()
    h.update(json.dumps({"shape": list(a.shape), "dtype": a.dtype.str}).encode())
    flat = memoryview(a.reshape(-1).view(np.uint8))
    step = 1 << 24
    for i in range(0, len(flat), step):
        h.update(flat[i : i + step])
    return f"sha256:{h.hexdigest()}"


def write_checkpoint(path, state):
    """Write a training state dict (params, moments, chains, update, settings) atomically."""

    def write(f):
        for grp in ("params", "moments"):
            g = f.create_group(grp)
            for k, v in state[grp].items():
                g.create_dataset(k, data=np.asarray(v, dtype=np.float32))
        f.create_dataset("chains", data=np.asarray(state["chains"], dtype=np.float32))
        f.attrs["format"] = CHECKPOINT_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["raysearch_version"] = _version()
        f.attrs["update"] = int(state["update"])
        f.attrs["settings_json"] = json.dumps(state["settings"])
        f.attrs["data_fingerprint"] = state.get("data_fingerprint") or "none"

    return _atomic_h5(path, write)


def _fingerprint_attr(v):
    if isinstance(v, bytes):
        v = v.decode()
    return None if v in (None, "none") else str(v)


def is_checkpoint_file(path) -> bool:
    """True when ``path`` is an HDF5 file with ``format = "raysearch-crbm-checkpoint"``."""
    try:
        _open(path, CHECKPOINT_FORMAT).close()
    except (InputError, OSError):
        return False
    return True


def read_checkpoint(path):
    """Read a checkpoint written by :func:`write_checkpoint` (host numpy arrays)."""
    with _reading(path), _open(path, CHECKPOINT_FORMAT) as f:
        try:
            return {
                "params": {k: np.asarray(v) for k, v in f["params"].items()},
                "moments": {k: np.asarray(v) for k, v in f["moments"].items()},
                "chains": np.asarray(f["chains"]),
                "update": int(f.attrs["update"]),
                "settings": json.loads(f.attrs["settings_json"]),
                "data_fingerprint": _fingerprint_attr(f.attrs.get("data_fingerprint")),
            }
        except (KeyError, ValueError) as exc:
            raise InputError(f"{path}: incomplete checkpoint file ({exc})") from None
