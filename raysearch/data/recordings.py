"""Reading whole-brain recordings: the published cRBM layout, the Fishualizer layout, and NWB.

Layouts
-------
``crbm``
    The published cRBM files (van der Plas, Tubiana et al. 2023): ``Data/Brain/Analysis/
    ThresholdedSpikes`` (T, N) 0/1, ``Data/Brain/Analysis/DFF_align`` or ``DFF`` (T, N),
    ``Data/Brain/Coordinates`` and ``Data/Brain/ZBrainCoordinates`` (3, N) mm, ``Data/Brain/Times``
    (T, 1) s, ``Data/Brain/Labels`` (294, N) 0/1 region masks.
``fishualizer``
    Datasets anywhere in the file, recognised by their lower-cased leaf name as the Fishualizer
    does (``values``/``dff``/``df``/..., ``coordinates``, ``refcoordinates``/``zbraincoordinates``,
    ``times``, ``labels``, ``spikes``/``thresholdedspikes``/...). Files written by MATLAB store
    arrays transposed, so every array is oriented by matching the neuron count N (taken from the
    coordinates: ``N = max(coords.shape)``). When T == N the array is taken as time-first.
``nwb``
    ``processing/ophys`` with a ``DfOverF`` (else ``Fluorescence``) RoiResponseSeries (T, N), a
    series whose name contains "neuron" first (DANDI:000350 also has glia series);
    coordinates from the PlaneSegmentation's ``voxel_mask`` (weighted mean of x, y, z) or
    ``pixel_mask`` (x, y; z from the imaging plane's origin), scaled by the imaging plane's
    ``grid_spacing`` when present. Needs the ``nwb`` extra (pynwb).

Units: coordinates are returned in micrometres. A dataset with attribute ``unit`` equal to ``mm``
(or, without the attribute, whose values span less than 10) is multiplied by 1000.

Memory: every (T, N) array is read once, in blocks, straight into its preallocated output (column
selection and transposition happen per block), so loading never holds more than the output arrays
plus one block (about 64 MB).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from raysearch.errors import ConfigError, InputError, RaysearchError, check_readable

__all__ = ["Recording", "load_recording", "SIGNALS"]

log = logging.getLogger(__name__)

SIGNALS = ("spikes", "dff")
_BLOCK_BYTES = 64 * 2**20

# Fishualizer alias table (lower-cased leaf names).
_ALIASES = {
    "dff": ("df_aligned", "dff_align", "df/f", "dff", "calcium", "values", "calcium_data", "df"),
    "coords": ("coordinates", "coords", "coordinates_raw"),
    "ref_coords": (
        "refcoords",
        "ref_coords",
        "refcoordinates",
        "ref_coordinates",
        "reference_coordinates",
        "coordinates_registered",
        "zbraincoords",
        "zbrain_coords",
        "zbrain_coordinates",
        "zbraincoordinates",
    ),
    "times": ("times", "time", "time_vector"),
    "spikes": ("spike", "spikes", "spike_data", "thresholdedspikes"),
    "labels": ("labels", "region_labels", "zbrainatlas_labels"),
}
_CRBM = {
    "spikes": ("Data/Brain/Analysis/ThresholdedSpikes",),
    "dff": ("Data/Brain/Analysis/DFF_align", "Data/Brain/Analysis/DFF"),
    "coords": ("Data/Brain/Coordinates",),
    "ref_coords": ("Data/Brain/ZBrainCoordinates",),
    "times": ("Data/Brain/Times",),
    "labels": ("Data/Brain/Labels",),
}


@dataclass
class Recording:
    """One recording: activity, positions, regions.

    Attributes
    ----------
    spikes : ndarray, shape (T, N), bool, or None
    dff : ndarray, shape (T, N), float32, or None
    coords : ndarray, shape (N, 3), float32
        Micrometres, microscope frame.
    ref_coords : ndarray, shape (N, 3), float32, or None
        Micrometres, reference-brain (ZBrain) frame.
    times : ndarray, shape (T,), float64
        Seconds.
    labels : ndarray, shape (N, R), bool
        Region masks (may overlap).
    region_names : list of str, length R
    source : str
        Path, or ``"synthetic(seed=...)"``.
    layout : str
        ``"crbm"``, ``"fishualizer"``, ``"nwb"`` or ``"synthetic"`` (made in memory).
    n_dropped : int
        Neurons dropped because they are in no region (or, with ``on_nonfinite="drop"``, because
        their activity had NaN/inf; see ``n_nonfinite_dropped``).
    datasets : dict
        Every dataset found in the file: path -> shape (for ``raysearch inspect``).
    n_nonfinite_dropped : int
        Neurons dropped for NaN/inf activity.
    """

    spikes: np.ndarray | None
    dff: np.ndarray | None
    coords: np.ndarray
    ref_coords: np.ndarray | None
    times: np.ndarray
    labels: np.ndarray
    region_names: list[str]
    source: str
    layout: str
    n_dropped: int = 0
    datasets: dict = field(default_factory=dict)
    n_nonfinite_dropped: int = 0

    @property
    def n_neurons(self) -> int:
        return int(self.coords.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.times.shape[0])

    @property
    def frame_rate(self) -> float:
        """Frames per second, from the median frame interval (nan with fewer than 2 frames)."""
        if self.times.size < 2:
            return float("nan")
        dt = float(np.median(np.diff(self.times)))
        return 1.0 / dt if dt > 0 else float("nan")

    @property
    def signals(self) -> tuple[str, ...]:
        return tuple(s for s in SIGNALS if getattr(self, s) is not None)

    def region_counts(self) -> dict[str, int]:
        """Neurons per region (regions may overlap)."""
        counts = self.labels.sum(0)
        return {name: int(c) for name, c in zip(self.region_names, counts)}

    def summary(self) -> dict:
        """What a user checks first, as a JSON-able dict."""
        out = {
            "source": self.source,
            "layout": self.layout,
            "n_neurons": self.n_neurons,
            "n_frames": self.n_frames,
            "frame_rate_hz": round(self.frame_rate, 4),
            "duration_s": float(self.times[-1] - self.times[0]) if self.n_frames else 0.0,
            "signals": list(self.signals),
            "mean_spike_rate": None,
            "n_dropped": int(self.n_dropped),
            "n_nonfinite_dropped": int(self.n_nonfinite_dropped),
            "has_ref_coords": self.ref_coords is not None,
            "regions": {k: v for k, v in self.region_counts().items() if v > 0},
            "datasets": {k: list(v) for k, v in self.datasets.items()},
        }
        if self.spikes is not None:
            out["mean_spike_rate"] = float(_mean_bool(self.spikes))
        return out


def _mean_bool(a: np.ndarray) -> float:
    total = 0
    step = max(1, _BLOCK_BYTES // max(1, a.shape[1]))
    for i in range(0, a.shape[0], step):
        total += int(np.count_nonzero(a[i : i + step]))
    return total / max(1, a.size)


# ----------------------------------------------------------------------------------------------
# entry point


def load_recording(
    path, signals=("spikes", "dff"), drop_unlabelled: bool = True, on_nonfinite: str = "error"
) -> Recording:
    """Read a recording file (cRBM, Fishualizer or NWB layout; found automatically).

    Parameters
    ----------
    path : str or Path
    signals : sequence of {"spikes", "dff"}
        Which (T, N) arrays to read; the others are left as None (saves memory and time). A
        requested signal that the file lacks is None (logged); none of them present is an error.
    drop_unlabelled : bool
        Drop neurons that are in no region (counted in ``n_dropped``).
    on_nonfinite : {"error", "drop"}
        NaN/inf in the activity: raise, or drop those neurons.

    Returns
    -------
    Recording

    Raises
    ------
    InputError
        Missing, unreadable, truncated or not-HDF5 file; no known datasets; arrays that disagree on
        N or T; NaN/inf (with ``on_nonfinite="error"``); non-binary spikes; nothing left after
        region filtering.
    """
    if isinstance(signals, str):
        signals = (signals,)
    signals = tuple(signals)
    bad = [s for s in signals if s not in SIGNALS]
    if bad or not signals:
        raise ConfigError(f"signals must be a non-empty subset of {SIGNALS}, got {signals!r}")
    if on_nonfinite not in ("error", "drop"):
        raise ConfigError(f"on_nonfinite must be 'error' or 'drop', got {on_nonfinite!r}")
    path = Path(path)
    check_readable(path, "recording file")
    import h5py

    if not h5py.is_hdf5(path):
        raise InputError(
            f"{path}: not an HDF5/NWB file (no HDF5 signature); raysearch reads the "
            "cRBM and Fishualizer HDF5 layouts and NWB"
        )
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            f"{path}: cannot be opened as HDF5, the file may be truncated or corrupt ({exc})"
        ) from None
    try:
        with f:
            found = None
            if _is_nwb(f):
                found = _nwb_datasets(f, path)
            else:
                return _load_h5(f, path, signals, drop_unlabelled, on_nonfinite)
        # NWB: pynwb opens the file itself, after h5py has closed it
        return _load_nwb(path, signals, drop_unlabelled, on_nonfinite, found)
    except RaysearchError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        # h5py raises these when a dataset's bytes are missing (truncated file) or its
        # metadata is damaged (e.g. a type that cannot be represented)
        raise InputError(
            f"{path}: reading failed, the file may be truncated or corrupt "
            f"({type(exc).__name__}: {exc})"
        ) from None


# ----------------------------------------------------------------------------------------------
# HDF5 layouts


def _walk(f) -> dict:
    """All datasets in the file: path -> h5py.Dataset."""
    import h5py

    out = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset):
            out[name] = obj

    f.visititems(visit)
    return out


def _resolve(f, path) -> tuple[str, dict]:
    """Find the layout and the dataset for each key (dff, spikes, coords, ...)."""
    allds = _walk(f)
    chosen = {}
    for key, cands in _CRBM.items():
        for c in cands:
            if c in allds:
                chosen[key] = allds[c]
                break
    if "coords" in chosen and ("spikes" in chosen or "dff" in chosen):
        return "crbm", chosen
    chosen = {}
    for key, aliases in _ALIASES.items():
        # first alias in priority order, then shortest path
        for alias in aliases:
            hits = sorted(
                (p for p in allds if p.rsplit("/", 1)[-1].lower() == alias),
                key=lambda p: (p.count("/"), p),
            )
            if hits:
                chosen[key] = allds[hits[0]]
                break
    if "coords" not in chosen and "ref_coords" in chosen:
        chosen["coords"] = chosen["ref_coords"]
    if "coords" in chosen and ("spikes" in chosen or "dff" in chosen):
        return "fishualizer", chosen
    listing = ", ".join(f"{p} {tuple(d.shape)}" for p, d in list(allds.items())[:30]) or "none"
    missing = [
        k
        for k in ("coordinates", "spikes or dF/F")
        if (k == "coordinates" and "coords" not in chosen)
        or (k != "coordinates" and "spikes" not in chosen and "dff" not in chosen)
    ]
    raise InputError(
        f"{path}: none of the known recording layouts found (missing {' and '.join(missing)}). "
        f"Expected the cRBM layout (Data/Brain/Analysis/ThresholdedSpikes or DFF_align/DFF, "
        f"Data/Brain/Coordinates, ...) or Fishualizer names (Values, Coordinates, Times, Labels, "
        f"Spikes). Datasets found: {listing}"
    )


def _n_from_coords(shape, layout, path, name) -> int:
    if len(shape) != 2 or 3 not in shape:
        raise InputError(
            f"{path}: coordinates {name} have shape {shape}; expected (3, N) or (N, 3)"
        )
    if layout == "crbm":
        return int(shape[1]) if shape[0] == 3 else int(shape[0])
    return int(max(shape))


def _coords(ds, n, path, against=None) -> np.ndarray:
    a = np.asarray(ds[()], dtype=np.float64)
    if a.shape == (3, n) and n != 3:
        a = a.T
    elif a.shape != (n, 3):
        src = (
            f"{against.name} {tuple(against.shape)} and the activity give"
            if against is not None
            else "the recording has"
        )
        raise InputError(
            f"{path}: {ds.name} has shape {a.shape}, but {src} N = {n} neurons; "
            "coordinates must be (3, N) or (N, 3)"
        )
    if not np.all(np.isfinite(a)):
        raise InputError(f"{path}: {ds.name} has {int((~np.isfinite(a)).sum())} NaN/inf values")
    unit = ds.attrs.get("unit", ds.attrs.get("units", None))
    if isinstance(unit, bytes):
        unit = unit.decode()
    if isinstance(unit, np.ndarray):
        unit = "".join(chr(int(c)) for c in unit.ravel()) if unit.dtype.kind in "iuf" else str(unit)
    unit = str(unit).strip().lower() if unit is not None else None
    if unit in ("mm", "millimeter", "millimeters", "millimetre", "millimetres"):
        a = a * 1000.0
    elif unit is None and a.size and float(np.ptp(a, axis=0).max()) < 10.0:
        a = a * 1000.0  # published files store mm without a unit attribute
    with np.errstate(over="ignore"):
        out = a.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise InputError(
            f"{path}: {ds.name} has {int((~np.isfinite(out)).sum())} values too "
            "large for a coordinate (beyond float32); the dataset is corrupt"
        )
    return out


def _orient(shape, n, path, name, coords=None) -> tuple[bool, int]:
    """(transposed, T) for a 2-D activity dataset with neuron count n."""
    if len(shape) != 2:
        raise InputError(f"{path}: {name} has shape {shape}; expected a 2-D (T, N) array")
    if shape[1] == n:
        return False, int(shape[0])
    if shape[0] == n:
        return True, int(shape[1])
    src = (
        f"{coords.name} {tuple(coords.shape)} gives"
        if coords is not None
        else "the coordinates give"
    )
    raise InputError(
        f"{path}: {name} has shape {shape} but {src} N = {n} neurons; the "
        "activity and the coordinates disagree on N"
    )


def _read_activity(ds, n, keep, kind, path, name, transposed) -> tuple[np.ndarray, np.ndarray]:
    """Read a (T, N) or (N, T) dataset into a new (T, n_keep) array, one block at a time.

    Returns the array (bool for spikes, float32 for dff) and the per-neuron count of non-finite
    values (for spikes: of values that are not 0/1).
    """
    T = ds.shape[1] if transposed else ds.shape[0]
    n_keep = int(keep.sum())
    out = np.empty((T, n_keep), dtype=bool if kind == "spikes" else np.float32)
    bad = np.zeros(n_keep, dtype=np.int64)
    all_kept = n_keep == n
    itemsize = max(ds.dtype.itemsize, 4)
    dst_of = np.cumsum(keep) - 1
    if not transposed:
        step = max(1, _BLOCK_BYTES // (n * itemsize))
        direct = all_kept and kind == "dff" and ds.dtype == np.float32 and ds.chunks is None
        for t0 in range(0, T, step):
            t1 = min(T, t0 + step)
            if direct:
                ds.read_direct(out, np.s_[t0:t1], np.s_[t0:t1])
                bad += (~np.isfinite(out[t0:t1])).sum(0)
                continue
            block = ds[t0:t1]
            if not all_kept:
                block = block[:, keep]
            bad += _store(out, np.s_[t0:t1], slice(None), block, kind)
    else:
        step = max(1, _BLOCK_BYTES // (T * itemsize))
        for i0 in range(0, n, step):
            i1 = min(n, i0 + step)
            k = keep[i0:i1]
            if not k.any():
                continue
            block = ds[i0:i1]
            if not k.all():
                block = block[k]
            cols = slice(int(dst_of[i0:i1][k][0]), int(dst_of[i0:i1][k][-1]) + 1)
            bad[cols] += _store(out, slice(None), cols, block.T, kind)
    return out, bad


def _store(out, rows, cols, block, kind) -> np.ndarray:
    """Write block into out[rows, cols]; return per-column counts of bad values."""
    if kind == "spikes":
        if block.dtype == bool:
            out[rows, cols] = block
            return np.zeros(block.shape[1], dtype=np.int64)
        nonbin = (block != 0) & (block != 1)
        out[rows, cols] = block != 0
        return nonbin.sum(0)
    fin = np.isfinite(block)
    out[rows, cols] = block
    return (~fin).sum(0)


def _region_names(lab_ds, f, n_regions) -> list[str]:
    names = lab_ds.attrs.get("region_names", None)
    if names is not None:
        if isinstance(names, bytes):
            names = names.decode()
        if isinstance(names, str):
            try:
                names = json.loads(names)
            except json.JSONDecodeError:
                names = None
        else:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if names is None:
        parent = lab_ds.parent
        for cand in ("RegionNames", "region_names", "Labels_names", "LabelNames"):
            if cand in parent:
                names = [
                    n.decode() if isinstance(n, bytes) else str(n)
                    for n in np.asarray(parent[cand][()]).ravel()
                ]
                break
    if names is not None and len(names) != n_regions:
        raise InputError(
            f"{lab_ds.file.filename}: {lab_ds.name} has {n_regions} regions but its "
            f"region names list {len(names)}; fix the names (or remove them to use "
            "the default names)"
        )
    if names is None:
        if n_regions == len(ZBRAIN_REGIONS):
            names = list(ZBRAIN_REGIONS)
        else:
            names = [f"region_{i:03d}" for i in range(n_regions)]
    return list(names)


def _labels(ds, n, path, f) -> tuple[np.ndarray, list[str]]:
    a = ds[()]
    if a.ndim == 1 and a.shape[0] == n:
        a = a[:, None]
    if a.ndim != 2 or n not in a.shape:
        raise InputError(
            f"{path}: {ds.name} has shape {a.shape} but the coordinates give "
            f"N = {n} neurons; labels must be (R, N) or (N, R)"
        )
    if a.shape[1] == n:  # (R, N), the published orientation (also when R == N)
        lab = (a != 0).T
    else:  # (N, R)
        lab = a != 0
    lab = np.ascontiguousarray(lab)
    return lab, _region_names(ds, f, lab.shape[1])


def _load_h5(f, path, signals, drop_unlabelled, on_nonfinite) -> Recording:
    layout, ds = _resolve(f, path)
    found = {p: tuple(d.shape) for p, d in _walk(f).items()}
    n = _n_from_coords(ds["coords"].shape, layout, path, ds["coords"].name)
    wanted = [s for s in signals if s in ds]
    if not wanted:
        have = [s for s in SIGNALS if s in ds]
        raise InputError(f"{path}: asked for {list(signals)} but the file has only {have}")
    for s in signals:
        if s not in ds:
            log.warning("%s: no %s dataset; Recording.%s is None", path, s, s)
    # the activity is checked against the coordinates first, so a wrong-sized array is named
    orient = {s: _orient(ds[s].shape, n, path, ds[s].name, ds["coords"]) for s in wanted}
    coords = _coords(ds["coords"], n, path)
    ref = (
        _coords(ds["ref_coords"], n, path, against=ds["coords"])
        if "ref_coords" in ds and ds["ref_coords"] is not ds["coords"]
        else None
    )
    if "labels" in ds:
        labels, names = _labels(ds["labels"], n, path, f)
    else:
        log.warning("%s: no region labels found; all neurons are put in one region 'all'", path)
        labels, names = np.ones((n, 1), dtype=bool), ["all"]
    Ts = {s: t for s, (_, t) in orient.items()}
    if len(set(Ts.values())) > 1:
        raise InputError(
            f"{path}: the activity arrays disagree on the number of frames: "
            + ", ".join(f"{ds[s].name} has T = {t}" for s, t in Ts.items())
        )
    T = next(iter(Ts.values()))
    times = _times(ds.get("times"), T, path)
    return _assemble(
        path,
        layout,
        found,
        n,
        T,
        coords,
        ref,
        labels,
        names,
        times,
        {s: (ds[s], orient[s][0]) for s in wanted},
        drop_unlabelled,
        on_nonfinite,
    )


def _times(ds, T, path) -> np.ndarray:
    if ds is None:
        log.warning("%s: no frame times found; using frame indices (1 Hz)", path)
        return np.arange(T, dtype=np.float64)
    t = np.asarray(ds[()], dtype=np.float64).ravel()
    if t.size != T:
        raise InputError(
            f"{path}: {ds.name} has {t.size} frame times but the activity has T = {T} frames"
        )
    if not np.all(np.isfinite(t)):
        raise InputError(f"{path}: {ds.name} contains NaN/inf frame times")
    if t.size >= 2:
        step = np.diff(t)
        if not np.median(step) > 0:
            what = "constant" if np.all(step == 0) else "not increasing"
            raise InputError(
                f"{path}: {ds.name} (frame times) are {what} (from {t[0]:g} to "
                f"{t[-1]:g} s), so the frame rate is undefined; fix the times, or "
                "remove the dataset to use frame indices"
            )
        if np.any(step <= 0):
            log.warning(
                "%s: %s has %d frame interval(s) <= 0 (first at frame %d); the frame "
                "rate is taken from the median interval",
                path,
                ds.name,
                int((step <= 0).sum()),
                int(np.argmax(step <= 0)) + 1,
            )
    return t


def _assemble(
    path,
    layout,
    found,
    n,
    T,
    coords,
    ref,
    labels,
    names,
    times,
    sources,
    drop_unlabelled,
    on_nonfinite,
) -> Recording:
    keep = labels.any(1) if drop_unlabelled else np.ones(n, dtype=bool)
    n_dropped = int(n - keep.sum())
    if not keep.any():
        raise InputError(
            f"{path}: all {n} neurons are in no region; nothing left after region "
            "filtering (pass drop_unlabelled=False to keep them)"
        )
    arrays = {"spikes": None, "dff": None}
    bad_any = np.zeros(int(keep.sum()), dtype=bool)
    for s, (d, transposed) in sources.items():
        arr, bad = _read_activity(d, n, keep, s, path, d.name, transposed)
        if bad.any():
            if s == "spikes":
                raise InputError(
                    f"{path}: {d.name} should hold 0/1 spikes but has {int(bad.sum())} other "
                    f"values (in {int((bad > 0).sum())} neurons); read only the dF/F and "
                    "binarise it "
                    "(raysearch train: --signal dff --transform binarize; Python: "
                    "signals=('dff',) and preprocess(transform='binarize'))"
                )
            if on_nonfinite == "error":
                raise InputError(
                    f"{path}: {d.name} has {int(bad.sum())} NaN/inf values in "
                    f"{int((bad > 0).sum())} neurons; to drop those neurons pass "
                    "--on-nonfinite drop (raysearch train/inspect), on_nonfinite: drop (study "
                    "recordings) or on_nonfinite='drop' (Python)"
                )
            bad_any |= bad > 0
        arrays[s] = arr
    n_nonfinite = int(bad_any.sum())
    coords, labels = coords[keep], labels[keep]
    ref = ref[keep] if ref is not None else None
    if n_nonfinite:
        good = ~bad_any
        if not good.any():
            raise InputError(f"{path}: every neuron has NaN/inf activity; nothing left")
        log.warning("%s: dropping %d neurons with NaN/inf activity", path, n_nonfinite)
        for s in arrays:
            if arrays[s] is not None:
                arrays[s] = arrays[s][:, good]
        coords, labels = coords[good], labels[good]
        ref = ref[good] if ref is not None else None
    return Recording(
        spikes=arrays["spikes"],
        dff=arrays["dff"],
        coords=coords,
        ref_coords=ref,
        times=times,
        labels=labels,
        region_names=names,
        source=str(path),
        layout=layout,
        n_dropped=n_dropped + n_nonfinite,
        datasets=found,
        n_nonfinite_dropped=n_nonfinite,
    )


# ----------------------------------------------------------------------------------------------
# NWB


def _is_nwb(f) -> bool:
    return "nwb_version" in f.attrs or ("processing" in f and "acquisition" in f and "general" in f)


def _nwb_datasets(f, path) -> dict:
    return {p: tuple(d.shape) for p, d in _walk(f).items()}


def _import_pynwb(path):
    try:
        import pynwb  # noqa: F401
    except ImportError:
        raise InputError(
            f'{path}: is an NWB file, which needs pynwb: pip install "raysearch[nwb]"'
        ) from None
    return pynwb


def _load_nwb(path, signals, drop_unlabelled, on_nonfinite, found) -> Recording:
    pynwb = _import_pynwb(path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        io = None
        try:
            io = pynwb.NWBHDF5IO(str(path), "r")
            nwb = io.read()
        except Exception as exc:  # pynwb/hdmf raise many types on malformed files
            if io is not None:
                io.close()
            raise InputError(f"{path}: pynwb cannot read this NWB file ({exc})") from None
    try:
        if "ophys" not in nwb.processing:
            raise InputError(
                f"{path}: NWB file has no processing/ophys module; datasets found: "
                + ", ".join(list(found)[:30])
            )
        mod = nwb.processing["ophys"]
        series, kind = None, None
        for cname in ("DfOverF", "Fluorescence"):
            cands = [
                s
                for iface in mod.data_interfaces.values()
                if type(iface).__name__ == cname
                for s in iface.roi_response_series.values()
            ]
            if cands:
                # e.g. DANDI:000350 has neuron and glia series: prefer the neurons
                neuron = [s for s in cands if "neuron" in s.name.lower()]
                series, kind = (neuron or cands)[0], cname
                break
        if series is None:
            raise InputError(
                f"{path}: NWB processing/ophys has no DfOverF or Fluorescence "
                f"RoiResponseSeries; it has {list(mod.data_interfaces)}"
            )
        table = series.rois.table
        rows = np.asarray(series.rois.data[:], dtype=np.int64)
        coords = _nwb_coords(table, rows, path)
        n = coords.shape[0]
        data = series.data
        transposed, T = _orient(tuple(data.shape), n, path, f"{kind}/{series.name}")
        if series.timestamps is not None:
            times = np.asarray(series.timestamps[:], dtype=np.float64)
        else:
            times = float(series.starting_time or 0.0) + np.arange(T) / float(series.rate)
        if times.size != T:
            raise InputError(f"{path}: {series.name} has {times.size} timestamps but T = {T}")
        if "dff" not in signals:
            raise InputError(
                f"{path}: NWB files provide dF/F (or fluorescence) only; asked for "
                f"{list(signals)}; use the dF/F (raysearch train: --signal dff; "
                "a study: preprocessing.signal: dff; Python: signals=('dff',))"
            )
        if "spikes" in signals:
            log.warning("%s: NWB has no binary spikes; Recording.spikes is None", path)
        labels, names = np.ones((n, 1), dtype=bool), ["all"]
        return _assemble(
            path,
            "nwb",
            found,
            n,
            T,
            coords,
            None,
            labels,
            names,
            times,
            {"dff": (data, transposed)},
            drop_unlabelled,
            on_nonfinite,
        )
    finally:
        io.close()


def _mask_centres(col, path, name) -> np.ndarray:
    """Weighted mean position (n_rois, 3) of every ROI's voxel/pixel mask.

    Reads the ragged compound column and its index in one go (fast for ~100k ROIs); falls back to
    row-by-row access for in-memory or unusual tables.
    """
    try:
        ends = np.asarray(col.data[:], dtype=np.int64)
        data = col.target.data
        raw = data.dataset[()] if hasattr(data, "dataset") else np.asarray(data[:])
        fields = [f for f in ("x", "y", "z") if f in raw.dtype.names]
        xyz = np.zeros((raw.shape[0], 3))
        for j, f in enumerate(fields):
            xyz[:, j] = raw[f]
        w = np.asarray(raw["weight"], dtype=np.float64)
    except (AttributeError, TypeError, KeyError, ValueError):
        rows = []
        for r in range(len(col)):
            m = col[r]
            arr = np.asarray(
                [tuple(x) for x in (m.to_records(index=False) if hasattr(m, "to_records") else m)],
                dtype=float,
            )
            rows.append(arr)
        ends = np.cumsum([len(a) for a in rows]).astype(np.int64)
        allm = np.concatenate(rows) if rows else np.zeros((0, 4))
        xyz = np.zeros((allm.shape[0], 3))
        xyz[:, : allm.shape[1] - 1] = allm[:, :-1]
        w = allm[:, -1]
    starts = np.concatenate([[0], ends[:-1]])
    counts = ends - starts
    if np.any(counts <= 0):
        raise InputError(f"{path}: ROI {int(np.flatnonzero(counts <= 0)[0])} has an empty {name}")
    roi = np.repeat(np.arange(ends.size), counts)
    wsum = np.bincount(roi, weights=w, minlength=ends.size)
    zero = wsum <= 0  # all-zero weights: plain mean
    w = np.where(zero[roi], 1.0, w)
    wsum = np.bincount(roi, weights=w, minlength=ends.size)
    out = np.stack(
        [np.bincount(roi, weights=w * xyz[:, j], minlength=ends.size) for j in range(3)], axis=1
    )
    return out / wsum[:, None]


def _nwb_coords(table, rows, path) -> np.ndarray:
    cols = set(table.colnames)
    scale = np.ones(3)
    origin = np.zeros(3)
    plane = getattr(table, "imaging_plane", None)
    if plane is not None:
        gs = getattr(plane, "grid_spacing", None)
        unit = (getattr(plane, "grid_spacing_unit", None) or "meters").lower()
        factor = {
            "meters": 1e6,
            "meter": 1e6,
            "m": 1e6,
            "millimeters": 1e3,
            "mm": 1e3,
            "micrometers": 1.0,
            "um": 1.0,
            "micrometer": 1.0,
            "µm": 1.0,
        }.get(unit, 1e6)
        if gs is not None and len(gs) >= 2:
            g = np.asarray(gs, dtype=float) * factor
            scale[: len(g)] = g[:3]
        oc = getattr(plane, "origin_coords", None)
        if oc is not None and len(oc) >= 2:
            ounit = (getattr(plane, "origin_coords_unit", None) or "meters").lower()
            o = np.asarray(oc, dtype=float) * {
                "meters": 1e6,
                "m": 1e6,
                "millimeters": 1e3,
                "mm": 1e3,
            }.get(ounit, 1.0)
            origin[: len(o)] = o[:3]
    if "voxel_mask" not in cols and "pixel_mask" not in cols:
        raise InputError(
            f"{path}: the NWB PlaneSegmentation has neither voxel_mask nor "
            f"pixel_mask (columns: {sorted(cols)}); cannot place the ROIs"
        )
    name = "voxel_mask" if "voxel_mask" in cols else "pixel_mask"
    out = _mask_centres(table[name], path, name)[rows]
    if name == "pixel_mask":
        out[:, 2] = 0.0
    return (out * scale + origin).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The 294 ZBrain atlas masks (Randlett et al. 2015) in the order of the published files' Labels
# axis (alphabetical, as listed in the cRBM authors' RegionLabels.txt), one per line in the package
# data file zbrain_regions.txt. Used to name the regions of a file whose Labels have 294 rows and no
# names of their own.
ZBRAIN_REGIONS = (
    (resources.files("raysearch.data") / "zbrain_regions.txt")
    .read_text(encoding="utf-8")
    .splitlines()
)
