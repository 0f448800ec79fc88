"""Assembly recovery: how well a model's hidden units match the assemblies planted in a synthetic fish.

For each planted assembly ``k`` (its weight vector ``g_k``, row ``k`` of
:attr:`raysearch.data.synthetic.GroundTruth.weights`, shape (N,)) the score is the best absolute cosine
similarity with any hidden unit's weight vector ``w_mu`` (row ``mu`` of the model's ``weights_``,
shape (M, N)):

    r_k = max_mu |<g_k, w_mu>| / (||g_k|| ||w_mu||),

and the model's recovery is the mean of ``r_k`` over the planted assemblies. A hidden unit with
all-zero weights has cosine 0 with everything. When the model's visible units are not the
recording's neurons one to one (voxels, dropped neurons), the planted weights are first summed into
the units (``Dataset.unit_of_neuron``).

On z-scored units (dF/F, :func:`unit_truth` with a Dataset whose ``zscore_std`` is set) the planted
assembly is expressed as the model sees it instead: a unit u averages its neurons' activity and is
divided by its s.d. s_u, so (to first order in the assembly's drive) assembly k moves the z-scored
unit by ``G_ku = mean_{n in u} g_kn / s_u`` - the mean planted weight of the voxel's neurons (the
same voxel assignment preprocessing used) over the voxel's s.d. A hidden unit that captured the
assembly has its weights along the covariance of the units with the assembly's activity, which is
this vector; the plain sum ignores both the averaging (voxels with more neurons would count more)
and the z-scoring (quiet voxels are amplified by it).

:func:`recovery_table` gives the recovery of every finished trial of an experiment directory whose
recording carries ground truth: a synthetic recording made on the fly by the study
(``synthetic:``) or a file written by ``raysearch synth`` (with a ``/GroundTruth`` group).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raysearch.errors import InputError

__all__ = ["Recovery", "assembly_recovery", "truth_in_units", "unit_truth", "recovery_table"]


@dataclass
class Recovery:
    """Recovery of the planted assemblies by one model.

    Attributes
    ----------
    per_assembly : ndarray, shape (K,)
        Best |cosine| of each planted assembly with any hidden unit, in [0, 1].
    best_unit : ndarray of int, shape (K,)
        The hidden unit that attains it.
    mean : float
        Mean of ``per_assembly`` (the model's recovery score).
    """

    per_assembly: np.ndarray
    best_unit: np.ndarray
    mean: float

    def to_frame(self) -> pd.DataFrame:
        """One row per planted assembly: ``assembly``, ``best_unit``, ``abs_cosine``."""
        return pd.DataFrame(
            {
                "assembly": np.arange(len(self.per_assembly)),
                "best_unit": self.best_unit,
                "abs_cosine": self.per_assembly,
            }
        )


def truth_in_units(truth_weights, unit_of_neuron=None, n_units=None) -> np.ndarray:
    """Planted weights expressed on the model's visible units.

    Parameters
    ----------
    truth_weights : array, shape (K, N)
        Planted weights per neuron.
    unit_of_neuron : array of int, shape (N,), optional
        Unit of each neuron (-1: left out), as ``Dataset.unit_of_neuron``. None: units are the
        neurons.
    n_units : int, optional
        Number of units (default: ``max(unit_of_neuron) + 1``).

    Returns
    -------
    ndarray, shape (K, n_units), float64: the summed planted weights of each unit's neurons.
    """
    G = np.asarray(truth_weights, dtype=np.float64)
    if G.ndim != 2:
        raise InputError(f"planted weights must be 2-D (K, N), got shape {G.shape}")
    if unit_of_neuron is None:
        return G
    u = np.asarray(unit_of_neuron, dtype=np.int64).reshape(-1)
    if u.shape[0] != G.shape[1]:
        raise InputError(
            f"unit_of_neuron has {u.shape[0]} entries but the planted weights "
            f"cover {G.shape[1]} neurons"
        )
    n = int(u.max()) + 1 if n_units is None else int(n_units)
    out = np.zeros((G.shape[0], n))
    keep = u >= 0
    np.add.at(out.T, u[keep], G[:, keep].T)
    return out


def unit_truth(truth_weights, dataset) -> np.ndarray:
    """Planted weights on a dataset's visible units (see the module docstring).

    Parameters
    ----------
    truth_weights : array, shape (K, N)
        Planted weights per recording neuron (``GroundTruth.weights``).
    dataset : Dataset
        Uses ``unit_of_neuron``, ``n_units``, and ``zscore_std`` (when set, the data are z-scored).

    Returns
    -------
    ndarray, shape (K, n_units), float64: per unit, the mean planted weight of its neurons over
    the unit's z-score s.d. for z-scored data; else the summed planted weights
    (:func:`truth_in_units`).
    """
    n = int(dataset.n_units)
    G = truth_in_units(truth_weights, getattr(dataset, "unit_of_neuron", None), n_units=n)
    std = getattr(dataset, "zscore_std", None)
    if std is None:
        return G
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if std.shape[0] != n:
        raise InputError(f"the dataset has {n} units but {std.shape[0]} z-score s.d.s")
    u = getattr(dataset, "unit_of_neuron", None)
    if u is None:
        counts = np.ones(n)
    else:
        u = np.asarray(u, dtype=np.int64).reshape(-1)
        counts = np.bincount(u[u >= 0], minlength=n).astype(np.float64)
    return G / np.maximum(counts, 1.0) / np.where(std > 0, std, 1.0)


def assembly_recovery(weights, truth, unit_of_neuron=None, dataset=None) -> Recovery:
    """Best |cosine| of each planted assembly with any hidden unit of a model.

    Parameters
    ----------
    weights : array, shape (M, N_units)
        The model's weights (``CRBM.weights_``), or a fitted CRBM.
    truth : GroundTruth or array, shape (K, N)
        The synthetic fish's ground truth, or its planted weights.
    unit_of_neuron : array of int, shape (N,), optional
        Neuron -> unit map when the model's units are not the neurons one to one.
    dataset : Dataset, optional
        The data the model was fitted to: the planted weights are mapped by :func:`unit_truth`
        (voxel means over the z-score s.d. for z-scored data); overrides ``unit_of_neuron``.

    Returns
    -------
    Recovery
    """
    W = getattr(weights, "weights_", weights)
    W = np.asarray(W, dtype=np.float64)
    G = getattr(truth, "weights", truth)
    if W.ndim != 2:
        raise InputError(f"model weights must be 2-D (M, N), got shape {W.shape}")
    if not np.all(np.isfinite(W)):
        raise InputError("model weights contain NaN/inf (a diverged fit): recovery is undefined")
    if dataset is not None:
        if int(dataset.n_units) != W.shape[1]:
            raise InputError(
                f"the model has {W.shape[1]} visible units but the dataset {dataset.n_units}"
            )
        G = unit_truth(G, dataset)
    else:
        G = truth_in_units(G, unit_of_neuron, n_units=W.shape[1])
    if G.shape[1] != W.shape[1]:
        raise InputError(
            f"the model has {W.shape[1]} visible units but the ground truth "
            f"{G.shape[1]} neurons; pass unit_of_neuron (Dataset.unit_of_neuron) "
            "for voxelised or filtered data"
        )
    if G.shape[0] == 0:
        raise InputError("the ground truth has no planted assembly")
    gn = np.linalg.norm(G, axis=1, keepdims=True)
    wn = np.linalg.norm(W, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        C = np.abs((G / np.where(gn > 0, gn, 1.0)) @ (W / np.where(wn > 0, wn, 1.0)).T)
    C = np.nan_to_num(C, nan=0.0)
    if C.shape[1] == 0:
        per, best = np.zeros(G.shape[0]), np.full(G.shape[0], -1)
    else:
        best = C.argmax(axis=1)
        per = C[np.arange(G.shape[0]), best]
    per = np.minimum(per, 1.0)
    return Recovery(per_assembly=per, best_unit=best.astype(np.int64), mean=float(per.mean()))


def _truth_for(spec: dict):
    """GroundTruth of a study's recording spec, or None when it carries none."""
    from raysearch.data.synthetic import load_ground_truth, make_synthetic_recording

    if spec.get("synthetic") is not None:
        kw = {k: v for k, v in spec["synthetic"].items() if v is not None}
        _, truth = make_synthetic_recording(**kw, signals=())
        return truth
    path = spec.get("path")
    if path is None or "://" in str(path):
        return None
    try:
        return load_ground_truth(path)
    except InputError:
        return None


def _study_dataset(study: dict, spec: dict):
    """The Dataset of one recording, rebuilt with the study's preprocessing."""
    from raysearch.search.config import study_from_dict
    from raysearch.search.tuner import prepare_datasets

    one = dict(study, recordings=[spec])
    return next(iter(prepare_datasets(study_from_dict(one)).values()))


def _zscored(study: dict) -> bool:
    """Whether the study's preprocessing z-scores (dF/F with transform auto, or zscore)."""
    pre = study.get("preprocessing") or {}
    transform = pre.get("transform", "auto")
    return transform == "zscore" or (transform == "auto" and pre.get("signal") == "dff")


def recovery_table(results) -> pd.DataFrame:
    """Recovery of the planted assemblies for every finished trial of a study.

    Parameters
    ----------
    results : path or DataFrame
        An experiment directory, or the DataFrame of :func:`raysearch.load_results` for it (its
        ``attrs["study"]`` names the recordings).

    Returns
    -------
    DataFrame, one row per finished trial whose recording carries ground truth and whose model
    file is readable: ``trial_id``, ``lam``, ``seed``, ``recording``, ``mean_nrmse``,
    ``max_nrmse``, ``bad``, ``weight_density``, ``recovery`` (mean best |cosine|),
    ``recovery_min`` (worst planted assembly), ``n_assemblies``. Diverged models (non-finite
    weights) get NaN recovery. On voxels or z-scored units the planted weights are mapped by
    :func:`unit_truth` with the study's own preprocessing.

    Raises
    ------
    InputError
        When no recording of the study carries ground truth.
    """
    import h5py

    if isinstance(results, pd.DataFrame):
        df = results
    else:
        from raysearch.search import load_results

        df = load_results(results)
    study = df.attrs.get("study") or {}
    specs = study.get("recordings") or []
    from raysearch.search.config import RecordingSpec

    keys = {RecordingSpec.model_validate(spec).key: spec for spec in specs}
    truths = {k: _truth_for(s) for k, s in keys.items()}
    truths = {k: t for k, t in truths.items() if t is not None}
    if not truths:
        raise InputError(
            "no recording of this study carries ground truth (a `synthetic:` "
            "recording or a file written by `raysearch synth`); assembly recovery "
            "needs planted assemblies"
        )
    maps: dict = {}
    rows = []
    for r in df.itertuples(index=False):
        rec = str(getattr(r, "recording", ""))
        path = getattr(r, "model_path", None)
        if rec not in truths or not isinstance(path, str):
            continue
        try:
            with h5py.File(path, "r") as f:
                W = np.asarray(f["weights"])
        except (OSError, KeyError):
            continue
        truth = truths[rec]
        ds = None
        if W.shape[1] != truth.weights.shape[1] or _zscored(study):
            if rec not in maps:
                maps[rec] = _study_dataset(study, keys[rec])
            ds = maps[rec]
        if np.all(np.isfinite(W)):
            rc = assembly_recovery(W, truth, dataset=ds)
            mean, worst = rc.mean, float(rc.per_assembly.min())
        else:
            mean = worst = float("nan")
        rows.append(
            {
                "trial_id": r.trial_id,
                "lam": r.lam,
                "seed": r.seed,
                "recording": rec,
                "mean_nrmse": getattr(r, "mean_nrmse", np.nan),
                "max_nrmse": getattr(r, "max_nrmse", np.nan),
                "bad": getattr(r, "bad", None),
                "weight_density": getattr(r, "weight_density", np.nan),
                "recovery": mean,
                "recovery_min": worst,
                "n_assemblies": truth.n_assemblies,
            }
        )
    cols = [
        "trial_id",
        "lam",
        "seed",
        "recording",
        "mean_nrmse",
        "max_nrmse",
        "bad",
        "weight_density",
        "recovery",
        "recovery_min",
        "n_assemblies",
    ]
    return pd.DataFrame(rows, columns=cols)
