"""From a recording to a dataset: voxel averaging, binarising or z-scoring, train/test split.

Steps of :func:`preprocess`, in order:

1. **signal**: ``"spikes"`` (T, N) 0/1 or ``"dff"`` (T, N) float.
2. **voxel averaging** (``voxel_um``): cubic bins of ``voxel_um`` micrometres on a grid anchored at
   the origin of the reference-brain frame (``Recording.ref_coords``): neuron ``i`` is in voxel
   ``floor(ref_coords[i] / voxel_um)`` and the voxel centre is ``(index + 0.5) * voxel_um``, so the
   same voxel is the same place in every registered fish. Voxels with fewer than
   ``min_neurons_per_voxel`` neurons are left out (and so are their neurons). Each voxel keeps its
   centre, neuron count and majority region (most frequent region of its neurons; ties go to the
   lower region index; a neuron's region is the first region whose mask contains it). Units are
   ordered by voxel index (x, then y, then z). Without reference coordinates the microscope
   coordinates are used (with a warning).
3. **transform**: ``"binarize"`` (``x > threshold``), ``"zscore"`` (per unit, mean and s.d. over the
   *training* frames, applied to train and test), or ``"none"``. ``"auto"`` gives ``"none"`` for
   single-neuron spikes, ``"binarize"`` for voxel-averaged spikes, ``"zscore"`` for dF/F, and follows
   ``visible`` when it is given. Bernoulli visible units need 0/1 data; gaussian units take any
   real values.
4. **split**: the frames are cut into ``n_segments`` contiguous segments (``numpy.array_split``
   boundaries) and ``n_test_segments`` of them are held out: either a fixed tuple (default
   ``(2, 6, 7)``, as in the published cRBM work) or ``"percentile"``, the published rule, see
   :func:`percentile_split`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np

from raysearch.errors import ConfigError, InputError

__all__ = [
    "Dataset",
    "preprocess",
    "voxelize",
    "voxel_average",
    "segment_bounds",
    "split_scores",
    "percentile_split",
    "unit_regions",
]

log = logging.getLogger(__name__)
_BLOCK_BYTES = 64 * 2**20


@dataclass
class Dataset:
    """Train and test matrices plus what each unit is.

    Attributes
    ----------
    train : ndarray, shape (T_train, N_units), float32
    test : ndarray, shape (T_test, N_units), float32
    visible : {"bernoulli", "gaussian"}
    coords : ndarray, shape (N_units, 3), float32
        Micrometres (voxel centres in the reference frame when voxelized, else microscope frame).
    unit_region : ndarray, shape (N_units,), int
        Index into ``region_names``; -1 = none.
    region_names : list of str
    n_neurons : ndarray, shape (N_units,), int
        Neurons per unit (1 without voxels).
    test_segments : tuple of int
    n_segments : int
    source : str
    signal : {"spikes", "dff"}
    voxel_um : float or None
    transform : str
        The transform applied (``"auto"`` resolved).
    threshold : float or None
        Binarisation threshold when ``transform == "binarize"``.
    unit_of_neuron : ndarray, shape (N,), int
        Unit index of each recording neuron (-1: left out).
    split_rule : str
        ``"fixed"`` or ``"percentile"``.
    split_score : float or None
        The combined split score of the chosen test segments (percentile rule only).
    """

    train: np.ndarray
    test: np.ndarray
    visible: str
    coords: np.ndarray
    unit_region: np.ndarray
    region_names: list[str]
    n_neurons: np.ndarray
    test_segments: tuple[int, ...]
    n_segments: int
    source: str
    signal: str
    voxel_um: float | None
    transform: str = "none"
    threshold: float | None = None
    unit_of_neuron: np.ndarray | None = None
    split_rule: str = "fixed"
    split_score: float | None = None
    zscore_mean: np.ndarray | None = field(default=None, repr=False)
    zscore_std: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_units(self) -> int:
        return int(self.train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test.shape[0])

    def describe(self) -> dict:
        """JSON-able summary."""
        return {
            "source": self.source,
            "signal": self.signal,
            "visible": self.visible,
            "transform": self.transform,
            "threshold": self.threshold,
            "voxel_um": self.voxel_um,
            "n_units": self.n_units,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "n_segments": self.n_segments,
            "test_segments": list(self.test_segments),
            "split_rule": self.split_rule,
            "split_score": self.split_score,
            "mean_train": float(self.train.mean()) if self.train.size else float("nan"),
            "neurons_per_unit_mean": float(np.mean(self.n_neurons)),
        }


# ----------------------------------------------------------------------------------------------
# pure helpers


def unit_regions(labels: np.ndarray) -> np.ndarray:
    """Region index of each neuron: the first region whose mask holds it, -1 for none.

    Parameters
    ----------
    labels : ndarray, shape (N, R), bool

    Returns
    -------
    ndarray, shape (N,), int
    """
    labels = np.asarray(labels, dtype=bool)
    if labels.shape[1] == 0:
        return np.full(labels.shape[0], -1)
    reg = np.argmax(labels, axis=1)
    reg[~labels.any(1)] = -1
    return reg.astype(np.int64)


def voxelize(
    coords_um: np.ndarray,
    voxel_um: float,
    neuron_region: np.ndarray | None = None,
    min_neurons: int = 1,
):
    """Assign neurons to cubic voxels on a grid anchored at the frame's origin.

    Parameters
    ----------
    coords_um : ndarray, shape (N, 3)
        Micrometres (reference-brain frame).
    voxel_um : float
        Voxel edge length.
    neuron_region : ndarray, shape (N,), int, optional
        Region index per neuron (-1 none) for the majority region.
    min_neurons : int
        Voxels with fewer neurons are left out.

    Returns
    -------
    unit_of_neuron : ndarray, shape (N,), int
        Voxel (unit) index per neuron; -1 when its voxel is left out.
    centres : ndarray, shape (U, 3), float32
    counts : ndarray, shape (U,), int
    region : ndarray, shape (U,), int
        Majority region (ties: lower index; -1 only if all neurons have none... see notes).
    """
    if not (voxel_um and voxel_um > 0):
        raise ConfigError(f"voxel_um must be > 0 micrometres, got {voxel_um!r}")
    coords_um = np.asarray(coords_um, dtype=np.float64)
    idx = np.floor(coords_um / float(voxel_um)).astype(np.int64)
    keys, inverse, counts = np.unique(idx, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    ok = counts >= int(min_neurons)
    new = np.full(keys.shape[0], -1, dtype=np.int64)
    new[ok] = np.arange(int(ok.sum()))
    unit_of_neuron = new[inverse]
    centres = ((keys[ok] + 0.5) * float(voxel_um)).astype(np.float32)
    counts = counts[ok].astype(np.int64)
    U = centres.shape[0]
    region = np.full(U, -1, dtype=np.int64)
    if neuron_region is not None and U:
        neuron_region = np.asarray(neuron_region, dtype=np.int64)
        m = unit_of_neuron >= 0
        R = int(neuron_region.max()) + 2
        # shift by one so that -1 (no region) is a column; majority among labelled neurons
        table = np.zeros((U, R), dtype=np.int64)
        np.add.at(table, (unit_of_neuron[m], neuron_region[m] + 1), 1)
        lab = table[:, 1:]
        has = lab.sum(1) > 0
        region[has] = np.argmax(lab[has], axis=1)
    return unit_of_neuron, centres, counts, region


def voxel_average(X: np.ndarray, unit_of_neuron: np.ndarray, n_units: int) -> np.ndarray:
    """Mean of X over the neurons of each unit, computed in blocks of frames.

    Parameters
    ----------
    X : ndarray, shape (T, N), bool or float
    unit_of_neuron : ndarray, shape (N,), int (-1: left out)
    n_units : int

    Returns
    -------
    ndarray, shape (T, n_units), float32
    """
    from scipy import sparse

    T, N = X.shape
    m = unit_of_neuron >= 0
    counts = np.bincount(unit_of_neuron[m], minlength=n_units).astype(np.float64)
    cols = np.flatnonzero(m)
    A = sparse.csr_matrix(
        (1.0 / counts[unit_of_neuron[m]], (cols, unit_of_neuron[m])),
        shape=(N, n_units),
        dtype=np.float32,
    )
    At = A.T.tocsr()
    out = np.empty((T, n_units), dtype=np.float32)
    step = max(1, _BLOCK_BYTES // (4 * N))
    for t0 in range(0, T, step):
        block = np.asarray(X[t0 : t0 + step], dtype=np.float32)
        out[t0 : t0 + step] = (At @ block.T).T
    return out


def segment_bounds(n_frames: int, n_segments: int) -> np.ndarray:
    """Boundaries (n_segments + 1,) of contiguous segments as ``numpy.array_split`` cuts them."""
    if n_frames < n_segments:
        raise InputError(
            f"{n_frames} frames cannot be cut into {n_segments} segments; "
            "use fewer segments or a longer recording"
        )
    sizes = np.full(n_segments, n_frames // n_segments)
    sizes[: n_frames % n_segments] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def split_scores(
    X: np.ndarray,
    n_segments: int = 10,
    n_test_segments: int = 3,
    max_units: int = 1000,
    seed: int = 0,
):
    """Train-vs-test RMSE of <v> and of <vv> - <v><v> for every choice of test segments.

    Parameters
    ----------
    X : ndarray, shape (T, U)
    n_segments, n_test_segments : int
    max_units : int
        The covariance term uses at most this many units (a fixed random subset drawn with
        ``seed``; all units when there are fewer), over all pairs i < j.
    seed : int

    Returns
    -------
    choices : list of tuple
        All ``C(n_segments, n_test_segments)`` choices, in ``itertools.combinations`` order.
    rmse_mean, rmse_cov : ndarray, shape (n_choices,)
    score : ndarray, shape (n_choices,)
        ``rmse_mean / median(rmse_mean) + rmse_cov / median(rmse_cov)`` (each term divided by its
        median over all choices so that both statistics count equally; a zero median is replaced
        by 1).
    """
    T, U = X.shape
    bounds = segment_bounds(T, n_segments)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(U, max_units, replace=False)) if U > max_units else np.arange(U)
    n = np.diff(bounds).astype(np.float64)
    sums = np.empty((n_segments, U))
    prods = np.empty((n_segments, sub.size, sub.size))
    for s in range(n_segments):
        seg = X[bounds[s] : bounds[s + 1]]
        sums[s] = seg.sum(0, dtype=np.float64)
        xs = np.asarray(seg[:, sub], dtype=np.float64)
        prods[s] = xs.T @ xs
    iu = np.triu_indices(sub.size, 1)
    choices = list(itertools.combinations(range(n_segments), n_test_segments))
    rm = np.empty(len(choices))
    rc = np.empty(len(choices))
    tot_n, tot_s, tot_p = n.sum(), sums.sum(0), prods.sum(0)
    for c, test in enumerate(choices):
        test = list(test)
        n_te = n[test].sum()
        s_te = sums[test].sum(0)
        p_te = prods[test].sum(0)
        n_tr, s_tr, p_tr = tot_n - n_te, tot_s - s_te, tot_p - p_te
        m_te, m_tr = s_te / n_te, s_tr / n_tr
        rm[c] = np.sqrt(np.mean((m_te - m_tr) ** 2))
        c_te = p_te / n_te - np.outer(m_te[sub], m_te[sub])
        c_tr = p_tr / n_tr - np.outer(m_tr[sub], m_tr[sub])
        rc[c] = np.sqrt(np.mean((c_te - c_tr)[iu] ** 2)) if iu[0].size else 0.0
    med_m = np.median(rm) or 1.0
    med_c = np.median(rc) or 1.0
    return choices, rm, rc, rm / med_m + rc / med_c


def percentile_split(
    X: np.ndarray,
    n_segments: int = 10,
    n_test_segments: int = 3,
    percentile: float = 10.0,
    max_units: int = 1000,
    seed: int = 0,
):
    """The published split rule: the choice of test segments at the 10th percentile of the score.

    All ``C(n_segments, n_test_segments)`` choices (120 for 10 and 3) are scored by
    :func:`split_scores`; they are sorted by score (ties keep ``itertools.combinations`` order) and
    the one at sorted position ``round(percentile / 100 * (n_choices - 1))`` is chosen (numpy's
    ``method="nearest"`` percentile; position 12 of 0..119 for 120 choices). A low percentile
    rather than the minimum avoids a test set that is unusually easy while keeping train and test
    statistically alike. Deterministic for given data, settings and seed.

    Returns
    -------
    test_segments : tuple of int
    score : float
    """
    choices, _, _, score = split_scores(X, n_segments, n_test_segments, max_units, seed)
    order = np.argsort(score, kind="stable")
    pos = int(round(percentile / 100.0 * (len(choices) - 1)))
    best = order[pos]
    return tuple(int(i) for i in choices[best]), float(score[best])


# ----------------------------------------------------------------------------------------------


def _check_binary(X, what):
    step = max(1, _BLOCK_BYTES // (4 * max(1, X.shape[1])))
    for t0 in range(0, X.shape[0], step):
        b = X[t0 : t0 + step]
        if b.dtype != bool and np.any((b != 0) & (b != 1)):
            raise ConfigError(
                f"{what}: bernoulli visible units need 0/1 data but the values are "
                "not binary; use transform='binarize' or visible='gaussian' "
                "(raysearch train: --transform binarize or --visible gaussian)"
            )


def _take_rows(X, ranges, dtype=np.float32):
    n = sum(b - a for a, b in ranges)
    out = np.empty((n, X.shape[1]), dtype=dtype)
    i = 0
    for a, b in ranges:
        step = max(1, _BLOCK_BYTES // (4 * max(1, X.shape[1])))
        for t0 in range(a, b, step):
            t1 = min(b, t0 + step)
            out[i : i + t1 - t0] = X[t0:t1]
            i += t1 - t0
    return out


def _col_moments(X):
    """Per-column mean and s.d. (population) of a float32 (T, U) array, in blocks.

    Two passes (mean, then centred squares) with float32 sums inside a block of at most 256
    rows and float64 accumulation across blocks.
    """
    T, U = X.shape
    step = max(1, min(256, _BLOCK_BYTES // (4 * max(1, U))))
    s1 = np.zeros(U)
    for t0 in range(0, T, step):
        s1 += X[t0 : t0 + step].sum(0, dtype=np.float32)
    n = max(1, T)
    mean = s1 / n
    m32 = mean.astype(np.float32)
    s2 = np.zeros(U)
    for t0 in range(0, T, step):
        d = X[t0 : t0 + step] - m32
        d *= d
        s2 += d.sum(0, dtype=np.float32)
    return mean, np.sqrt(s2 / n)


def preprocess(
    recording,
    signal: str = "spikes",
    voxel_um: float | None = None,
    transform: str = "auto",
    threshold: float = 0.5,
    visible: str | None = None,
    n_segments: int = 10,
    n_test_segments: int = 3,
    test_segments=(2, 6, 7),
    min_neurons_per_voxel: int = 1,
    on_constant: str = "drop",
    seed: int = 0,
    split_percentile: float = 10.0,
    split_max_units: int = 1000,
) -> Dataset:
    """Turn a :class:`~raysearch.data.recordings.Recording` into a train/test :class:`Dataset`.

    Parameters
    ----------
    recording : Recording
    signal : {"spikes", "dff"}
    voxel_um : float, optional
        Voxel edge in micrometres; None keeps single neurons.
    transform : {"auto", "binarize", "zscore", "none"}
    threshold : float
        Binarisation threshold (``x > threshold`` gives 1).
    visible : {"bernoulli", "gaussian"}, optional
        Default: bernoulli for 0/1 results, gaussian otherwise.
    n_segments, n_test_segments : int
    test_segments : tuple of int or "percentile"
        Fixed held-out segments (0-based), or the published percentile rule.
    min_neurons_per_voxel : int
    on_constant : {"drop", "error"}
        Units with zero variance over the training frames when z-scoring: drop them (warning) or
        raise.
    seed : int
        Seed of the unit subset used by the percentile rule.
    split_percentile, split_max_units : float, int
        Settings of :func:`percentile_split`.

    Returns
    -------
    Dataset
    """
    src = getattr(recording, "source", "recording")
    if signal not in ("spikes", "dff"):
        raise ConfigError(f"signal must be 'spikes' or 'dff', got {signal!r}")
    if transform not in ("auto", "binarize", "zscore", "none"):
        raise ConfigError(
            f"transform must be one of auto, binarize, zscore, none; got {transform!r}"
        )
    if visible not in (None, "bernoulli", "gaussian"):
        raise ConfigError(f"visible must be 'bernoulli' or 'gaussian', got {visible!r}")
    if on_constant not in ("drop", "error"):
        raise ConfigError(f"on_constant must be 'drop' or 'error', got {on_constant!r}")
    if not (isinstance(n_segments, (int, np.integer)) and n_segments >= 2):
        raise ConfigError(f"n_segments must be an integer >= 2, got {n_segments!r}")
    X = getattr(recording, signal)
    if X is None:
        have = [s for s in ("spikes", "dff") if getattr(recording, s, None) is not None]
        raise InputError(
            f"{src}: the recording has no {signal} (it has {have}); choose signal={have[0]!r}"
            if have
            else f"{src}: the recording has no activity"
        )
    T, N = X.shape
    if T < n_segments:
        raise InputError(
            f"{src}: {T} frames are fewer than the {n_segments} segments of the "
            "split; use fewer segments or a longer recording"
        )
    if isinstance(test_segments, str):
        if test_segments != "percentile":
            raise ConfigError(
                f"test_segments must be a tuple of segment indices or "
                f"'percentile', got {test_segments!r}"
            )
        if not (
            isinstance(n_test_segments, (int, np.integer)) and 1 <= n_test_segments < n_segments
        ):
            raise ConfigError(
                f"n_test_segments must be in 1..{n_segments - 1}, got {n_test_segments!r}"
            )
    else:
        ts = tuple(int(i) for i in test_segments)
        if (
            not ts
            or len(set(ts)) != len(ts)
            or min(ts) < 0
            or max(ts) >= n_segments
            or len(ts) >= n_segments
        ):
            raise ConfigError(
                f"test_segments {test_segments!r} must be distinct indices in "
                f"0..{n_segments - 1}, fewer than n_segments"
            )
        test_segments = tuple(sorted(ts))

    # 1-2: units
    neuron_region = unit_regions(recording.labels)
    if voxel_um is not None:
        anchor = recording.ref_coords
        if anchor is None:
            log.warning(
                "%s: no reference-brain coordinates; voxels are anchored in the "
                "microscope frame and are not comparable across fish",
                src,
            )
            anchor = recording.coords
        unit_of_neuron, coords, counts, unit_region = voxelize(
            anchor, voxel_um, neuron_region, min_neurons_per_voxel
        )
        if coords.shape[0] == 0:
            raise InputError(
                f"{src}: no voxel of {voxel_um} um holds at least "
                f"{min_neurons_per_voxel} neurons; nothing left after voxel "
                "averaging (use larger voxels or a lower min_neurons_per_voxel)"
            )
        data = voxel_average(X, unit_of_neuron, coords.shape[0])
        binary_data = False
    else:
        unit_of_neuron = np.arange(N)
        coords = np.asarray(recording.coords, dtype=np.float32)
        counts = np.ones(N, dtype=np.int64)
        unit_region = neuron_region
        data = X
        binary_data = X.dtype == bool

    # 3: transform and visible type
    if transform == "auto":
        if visible == "gaussian":
            transform = "zscore"
        elif visible == "bernoulli":
            transform = "none" if binary_data else "binarize"
        elif signal == "spikes":
            transform = "none" if binary_data else "binarize"
        else:
            transform = "zscore"
    if visible is None:
        visible = (
            "bernoulli"
            if transform == "binarize" or (transform == "none" and binary_data)
            else "gaussian"
        )
    if visible == "bernoulli":
        if transform == "zscore":
            raise ConfigError(
                "transform='zscore' gives real values, which bernoulli visible "
                "units cannot take; use visible='gaussian' or transform='binarize' "
                "(raysearch train: --visible gaussian or --transform binarize)"
            )
        if transform == "none" and not binary_data:
            _check_binary(data, src)
    if transform == "binarize":
        data = _binarize(data, threshold)

    # 4: split
    bounds = segment_bounds(T, n_segments)
    split_score = None
    rule = "fixed"
    if isinstance(test_segments, str):
        test_segments, split_score = percentile_split(
            data, n_segments, n_test_segments, split_percentile, split_max_units, seed
        )
        rule = "percentile"
    train_r = [(bounds[s], bounds[s + 1]) for s in range(n_segments) if s not in test_segments]
    test_r = [(bounds[s], bounds[s + 1]) for s in test_segments]
    train = _take_rows(data, train_r)
    test = _take_rows(data, test_r)
    del data

    mean = std = None
    if transform == "zscore":
        mean, std = _col_moments(train)
        const = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
        if const.any():
            if on_constant == "error":
                raise InputError(
                    f"{src}: {int(const.sum())} units are constant over the "
                    "training frames and cannot be z-scored; pass "
                    "on_constant='drop' to drop them"
                )
            if const.all():
                raise InputError(
                    f"{src}: every unit is constant over the training frames; "
                    "nothing left to z-score"
                )
            log.warning(
                "%s: dropping %d units that are constant over the training frames",
                src,
                int(const.sum()),
            )
            keep = ~const
            train, test = train[:, keep], test[:, keep]
            coords, counts, unit_region = coords[keep], counts[keep], unit_region[keep]
            mean, std = mean[keep], std[keep]
            remap = np.full(keep.size, -1, dtype=np.int64)
            remap[keep] = np.arange(int(keep.sum()))
            unit_of_neuron = np.where(unit_of_neuron >= 0, remap[np.maximum(unit_of_neuron, 0)], -1)
        _zscore_inplace(train, mean, std)
        _zscore_inplace(test, mean, std)

    return Dataset(
        train=train,
        test=test,
        visible=visible,
        coords=np.asarray(coords, dtype=np.float32),
        unit_region=np.asarray(unit_region, dtype=np.int64),
        region_names=list(recording.region_names),
        n_neurons=np.asarray(counts, dtype=np.int64),
        test_segments=tuple(int(s) for s in test_segments),
        n_segments=int(n_segments),
        source=src,
        signal=signal,
        voxel_um=None if voxel_um is None else float(voxel_um),
        transform=transform,
        threshold=float(threshold) if transform == "binarize" else None,
        unit_of_neuron=np.asarray(unit_of_neuron, dtype=np.int64),
        split_rule=rule,
        split_score=split_score,
        zscore_mean=None if mean is None else mean.astype(np.float32),
        zscore_std=None if std is None else std.astype(np.float32),
    )


def _binarize(data, threshold):
    out = np.empty(data.shape, dtype=bool)
    step = max(1, _BLOCK_BYTES // (4 * max(1, data.shape[1])))
    for t0 in range(0, data.shape[0], step):
        out[t0 : t0 + step] = data[t0 : t0 + step] > threshold
    return out


def _zscore_inplace(X, mean, std):
    m = mean.astype(np.float32)
    inv = (1.0 / std).astype(np.float32)
    step = max(1, _BLOCK_BYTES // (4 * max(1, X.shape[1])))
    for t0 in range(0, X.shape[0], step):
        blk = X[t0 : t0 + step]
        blk -= m
        blk *= inv


def check_trainable(ds) -> None:
    """Raise :class:`InputError` when a cRBM cannot learn anything from ``ds``: bernoulli training
    frames without a single spike (every metric of such a fit would be NaN)."""
    if ds.visible == "bernoulli" and not np.any(ds.train):
        raise InputError(
            f"{ds.source}: the training frames have no spikes at all (every value "
            "is 0); a cRBM cannot be fitted to them and every metric would be NaN. "
            "Check the recording (raysearch inspect) or model the dF/F (signal dff)"
        )
