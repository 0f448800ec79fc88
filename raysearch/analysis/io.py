"""Reading what the analyzer needs from model files (HDF5, layout in raysearch.crbm.io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from raysearch.errors import InputError, check_readable
from raysearch.verdicts import STATS


def _open(path):
    import h5py

    if "://" in str(path):
        raise InputError(
            f"model file {path} is on remote storage; copy the experiment "
            "directory to a local path (e.g. `aws s3 sync`, `gsutil rsync`) and "
            "analyze that"
        )
    check_readable(path, "model file")
    try:
        return h5py.File(path, "r")
    except (OSError, FileNotFoundError) as exc:
        raise InputError(f"cannot open model file {path}: {exc}") from None


class ModelFiles:
    """Lazy sequence of ``(weights (M, N), hidden_var (M,))`` read from model files.

    Each access reads the file again, so a consumer holds only what it is working on.

    Parameters
    ----------
    paths : sequence of path
    """

    def __init__(self, paths):
        self.paths = [str(p) for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, k):
        path = self.paths[k]
        with _open(path) as f:
            for key in ("weights", "hidden_var"):
                if key not in f:
                    raise InputError(
                        f"model file {path} has no /{key} dataset; it is not a "
                        "raysearch CRBM model file (or was written by an old version)"
                    )
            W, c = np.asarray(f["weights"]), np.asarray(f["hidden_var"])
        if not (np.isfinite(W).all() and np.isfinite(c).all()):
            raise InputError(
                f"model file {path} has NaN/inf weights or hidden_var (a diverged "
                "fit); remove it from models/ or re-run that trial"
            )
        return W, c

    def info(self, k) -> dict:
        """``n_visible`` and ``diverged`` of model k, from the file's metadata (cheap)."""
        with _open(self.paths[k]) as f:
            return {
                "n_visible": int(f["weights"].shape[1]),
                "diverged": bool(f.attrs.get("diverged", False)),
            }


def read_units(path):
    """``/units`` of a model file as a dict, or None (see :func:`raysearch.crbm.io.load_units`)."""
    from raysearch.crbm.io import load_units

    _open(path).close()
    return load_units(path)


def read_evaluation_stats(path):
    """``/evaluation/{stat}/{train,test,model}`` vectors of a model file.

    Returns
    -------
    dict {stat: {"train", "test", "model": ndarray}} (empty when the file has none)
    """
    out = {}
    with _open(path) as f:
        if "evaluation" not in f:
            return out
        g = f["evaluation"]
        for stat in g:
            sg = g[stat]
            if not hasattr(sg, "keys"):
                continue
            parts = {p: np.asarray(sg[p]).ravel() for p in ("train", "test", "model") if p in sg}
            if "test" in parts and "model" in parts:
                out[stat] = parts
    order = {s: i for i, s in enumerate(STATS)}
    return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], 99)))


def model_exists(path) -> bool:
    return path is not None and isinstance(path, str) and "://" not in path and Path(path).is_file()
