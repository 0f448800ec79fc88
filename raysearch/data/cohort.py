"""Several fish on one voxel grid: the joint dataset of a cross-subject cRBM; a synthetic cohort.

Joint dataset (:func:`joint_dataset`)
-------------------------------------
Every recording must carry reference-brain coordinates (``Recording.ref_coords``) and the same
region atlas (``region_names``); the voxel grid is the one of
:func:`raysearch.data.preprocessing.voxelize`, anchored at the origin of the reference frame, so a
voxel is the same place in every fish. Steps:

1. each fish is preprocessed on its own with :func:`~raysearch.data.preprocessing.preprocess`
   (voxel averaging, then per-fish z-scoring or binarising, then the train/test split of *that*
   fish: the held-out segments are taken from every fish);
2. the **common grid** is the set of voxels present (non-empty, and not constant when z-scoring)
   in at least ``min_fish`` fish (default: all fish), ordered by voxel index;
3. the fish's frames are stacked: ``train`` is fish 0's training frames, then fish 1's, ...;
   ``fish_train`` / ``fish_test`` give the fish of every frame, ``present`` (F, U) which voxels each
   fish has.

Missing voxels (only when ``min_fish`` < number of fish). A voxel that a fish lacks is filled with
that fish's mean of the transformed signal, which is 0 after per-fish z-scoring. The filled value
is an imputation, not an observation: training then treats the voxel as sitting at its mean in
every frame of that fish, which adds frames with no co-fluctuation and shrinks the voxel's weights
towards 0 roughly in proportion to the share of frames that are filled. For Bernoulli (binarised)
data there is no neutral 0/1 value, so missing voxels are refused there (use ``min_fish`` = number
of fish or z-scoring). Per-fish evaluation (:func:`raysearch.evaluation.evaluate_joint`) reports how many units of each
fish are filled. The default (every voxel present in every fish) has no missing entries and makes
no such assumption.

Synthetic cohort (:func:`make_synthetic_cohort`, :func:`write_synthetic_cohort`)
---------------------------------------------------------------------------------
``F`` fish, each with its own neuron positions (uniform in the ellipsoid of
:mod:`raysearch.data.synthetic`, own seed), background rates and assembly dynamics. Assemblies are
balls of radius ``radius_um`` in the reference frame: ``n_shared`` centres common to all fish plus
``n_private`` centres per fish; the members of an assembly in a fish are that fish's neurons in
the ball, with weights ``gain * U(0.6, 1.4)`` (logit units). Centres are at least
``2 * radius_um`` apart and at least ``radius_um`` inside the brain's
surface. Spikes follow ``P(s=1) = sigmoid(b_i + sum_k
w_ki a_tk)`` with two-state Markov activities ``a`` per assembly and fish (fish are recorded
separately, so their activities are independent). Only spikes are simulated.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raysearch.data.preprocessing import Dataset, preprocess
from raysearch.data.recordings import Recording
from raysearch.errors import ConfigError, InputError

__all__ = [
    "JointDataset",
    "joint_dataset",
    "CohortTruth",
    "make_synthetic_cohort",
    "write_synthetic_cohort",
    "load_cohort_truth",
]

log = logging.getLogger(__name__)


@dataclass
class JointDataset(Dataset):
    """A :class:`Dataset` over several fish on a common voxel grid.

    Attributes (besides those of :class:`Dataset`; ``unit_of_neuron`` is None)
    ----------
    fish_train : ndarray, shape (T_train,), int
        Fish index of every training frame.
    fish_test : ndarray, shape (T_test,), int
        Fish index of every test frame.
    fish_names : list of str, length F
    present : ndarray, shape (F, U), bool
        Voxel ``u`` is observed in fish ``f`` (else it was filled, see the module notes).
    voxel_keys : ndarray, shape (U, 3), int
        Integer voxel index (``floor(ref / voxel_um)``) of every unit.
    unit_of_neuron_per_fish : list of ndarray (N_f,), int
        Common-grid unit of each neuron of each fish (-1: left out).
    min_fish : int
    """

    fish_train: np.ndarray | None = None
    fish_test: np.ndarray | None = None
    fish_names: list = field(default_factory=list)
    present: np.ndarray | None = None
    voxel_keys: np.ndarray | None = None
    unit_of_neuron_per_fish: list = field(default_factory=list, repr=False)
    min_fish: int = 1

    @property
    def n_fish(self) -> int:
        return len(self.fish_names)

    def fish_dataset(self, f: int) -> Dataset:
        """The frames of fish ``f`` alone, on the common grid (views where possible)."""
        tr, te = self.fish_train == f, self.fish_test == f
        return Dataset(
            train=self.train[tr],
            test=self.test[te],
            visible=self.visible,
            coords=self.coords,
            unit_region=self.unit_region,
            region_names=self.region_names,
            n_neurons=self.n_neurons,
            test_segments=self.test_segments,
            n_segments=self.n_segments,
            source=self.fish_names[f],
            signal=self.signal,
            voxel_um=self.voxel_um,
            transform=self.transform,
            threshold=self.threshold,
            unit_of_neuron=self.unit_of_neuron_per_fish[f],
        )

    def describe(self) -> dict:
        d = super().describe()
        d.update(
            n_fish=self.n_fish,
            fish=list(self.fish_names),
            min_fish=int(self.min_fish),
            n_train_per_fish=np.bincount(self.fish_train, minlength=self.n_fish).tolist(),
            n_test_per_fish=np.bincount(self.fish_test, minlength=self.n_fish).tolist(),
            filled_units_per_fish=(~self.present).sum(1).tolist(),
        )
        return d


def _keys(centres, voxel_um):
    return np.round(np.asarray(centres, dtype=np.float64) / float(voxel_um) - 0.5).astype(np.int64)


def joint_dataset(
    recordings,
    voxel_um: float,
    min_fish: int | None = None,
    signal: str = "spikes",
    transform: str = "zscore",
    names=None,
    **preprocess_kwargs,
) -> JointDataset:
    """Build one train/test dataset from several registered recordings on a common voxel grid.

    Parameters
    ----------
    recordings : sequence of Recording
        Two or more fish registered to the same reference brain (``ref_coords`` set, identical
        ``region_names``).
    voxel_um : float
        Voxel edge in micrometres (> 0).
    min_fish : int, optional
        Keep the voxels present in at least this many fish (1..F; default F: every fish).
    signal : {"spikes", "dff"}
    transform : {"zscore", "binarize", "auto", "none"}
        Applied per fish (z-scoring uses each fish's own training mean and s.d.).
    names : sequence of str, optional
        Fish names (default: each recording's ``source``).
    **preprocess_kwargs
        Passed to :func:`~raysearch.data.preprocessing.preprocess` for every fish
        (``n_segments``, ``test_segments``, ``threshold``, ``min_neurons_per_voxel``, ...).

    Returns
    -------
    JointDataset
        train (sum_f T_train_f, U), test (sum_f T_test_f, U), float32.

    Raises
    ------
    InputError
        Fewer than two recordings, a recording without reference coordinates, recordings with
        different atlases, or no voxel left.
    ConfigError
        Bad ``voxel_um`` / ``min_fish``, or missing voxels with Bernoulli data.
    """
    recs = list(recordings)
    F = len(recs)
    if F < 2:
        raise InputError(f"a joint dataset needs at least 2 recordings, got {F}")
    if voxel_um is None or not (isinstance(voxel_um, (int, float)) and voxel_um > 0):
        raise ConfigError(
            f"a joint dataset needs voxel_um > 0 micrometres (the common grid), got {voxel_um!r}"
        )
    min_fish = F if min_fish is None else min_fish
    if (
        isinstance(min_fish, bool)
        or not isinstance(min_fish, (int, np.integer))
        or not 1 <= min_fish <= F
    ):
        raise ConfigError(f"min_fish must be an integer in 1..{F}, got {min_fish!r}")
    names = (
        [str(getattr(r, "source", f"fish{i}")) for i, r in enumerate(recs)]
        if names is None
        else [str(n) for n in names]
    )
    if len(names) != F:
        raise ConfigError(f"{len(names)} names for {F} recordings")
    for n, r in zip(names, recs):
        if getattr(r, "ref_coords", None) is None:
            raise InputError(
                f"{n}: the recording has no reference-brain coordinates; a joint "
                "dataset needs every fish registered to the same reference brain"
            )
    atlas = list(recs[0].region_names)
    for n, r in zip(names[1:], recs[1:]):
        if list(r.region_names) != atlas:
            raise InputError(
                f"{n}: its region atlas ({len(r.region_names)} regions) differs "
                f"from {names[0]}'s ({len(atlas)}); the recordings are not on the "
                "same reference grid"
            )
    if "voxel_um" in preprocess_kwargs:
        raise ConfigError("pass voxel_um once, as joint_dataset's argument")

    per = []
    for r in recs:
        ds = preprocess(
            r, signal=signal, voxel_um=float(voxel_um), transform=transform, **preprocess_kwargs
        )
        per.append(ds)
    visible = {d.visible for d in per}
    if len(visible) != 1:
        raise ConfigError(
            f"the fish gave different visible types {sorted(visible)}; set transform explicitly"
        )
    keys = [_keys(d.coords, voxel_um) for d in per]
    allk, inv = np.unique(np.concatenate(keys), axis=0, return_inverse=True)
    inv = inv.ravel()
    counts = np.zeros(allk.shape[0], dtype=np.int64)
    np.add.at(counts, inv, 1)
    keep = counts >= min_fish
    if not keep.any():
        raise InputError(
            f"no voxel of {voxel_um} um is present in at least {min_fish} of the "
            f"{F} fish; use larger voxels or a lower min_fish"
        )
    col = np.full(allk.shape[0], -1, dtype=np.int64)
    col[keep] = np.arange(int(keep.sum()))
    U = int(keep.sum())
    present = np.zeros((F, U), dtype=bool)
    maps, off = [], 0
    for f, d in enumerate(per):
        m = col[inv[off : off + d.n_units]]
        off += d.n_units
        maps.append(m)
        present[f, m[m >= 0]] = True
    vis = per[0].visible
    if vis == "bernoulli" and not present.all():
        raise ConfigError(
            f"{int((~present).sum())} (fish, voxel) entries are missing with "
            "min_fish < number of fish, and binarised data have no neutral value "
            "to fill them; use min_fish equal to the number of fish or "
            "transform='zscore'"
        )
    if vis == "gaussian" and per[0].transform != "zscore" and not present.all():
        raise ConfigError(
            "missing voxels are filled with the per-fish mean 0, which needs "
            "transform='zscore'; use min_fish equal to the number of fish"
        )

    T_tr = sum(d.n_train for d in per)
    T_te = sum(d.n_test for d in per)
    train = np.zeros((T_tr, U), dtype=np.float32)
    test = np.zeros((T_te, U), dtype=np.float32)
    fish_train = np.empty(T_tr, dtype=np.int64)
    fish_test = np.empty(T_te, dtype=np.int64)
    n_neurons = np.zeros(U, dtype=np.int64)
    unit_region = np.full(U, -1, dtype=np.int64)
    a = b = 0
    uon = []
    for f, (d, m) in enumerate(zip(per, maps)):
        ok = m >= 0
        src, dst = np.flatnonzero(ok), m[ok]
        for X, out, t0 in ((d.train, train, a), (d.test, test, b)):
            step = max(1, (64 * 2**20) // (4 * max(1, d.n_units)))
            for s in range(0, X.shape[0], step):
                blk = X[s : s + step]
                out[t0 + s : t0 + s + blk.shape[0], dst] = blk[:, src]
        fish_train[a : a + d.n_train] = f
        fish_test[b : b + d.n_test] = f
        a += d.n_train
        b += d.n_test
        np.add.at(n_neurons, dst, d.n_neurons[src])
        unset = unit_region[dst] < 0
        unit_region[dst[unset]] = d.unit_region[src[unset]]
        u = d.unit_of_neuron
        uon.append(np.where(u >= 0, m[np.maximum(u, 0)], -1).astype(np.int64))
        per[f] = None  # free the fish's arrays as soon as they are copied
    vkeys = allk[keep]
    return JointDataset(
        train=train,
        test=test,
        visible=vis,
        coords=((vkeys + 0.5) * float(voxel_um)).astype(np.float32),
        unit_region=unit_region,
        region_names=atlas,
        n_neurons=n_neurons,
        test_segments=tuple(int(s) for s in getattr(d, "test_segments", ())),
        n_segments=int(d.n_segments),
        source="joint(" + ", ".join(names) + ")",
        signal=signal,
        voxel_um=float(voxel_um),
        transform=d.transform,
        threshold=d.threshold,
        unit_of_neuron=None,
        split_rule=d.split_rule,
        fish_train=fish_train,
        fish_test=fish_test,
        fish_names=names,
        present=present,
        voxel_keys=vkeys,
        unit_of_neuron_per_fish=uon,
        min_fish=int(min_fish),
    )


# ----------------------------------------------------------------------------------------------
# synthetic cohort


@dataclass
class CohortTruth:
    """What a synthetic cohort was built from.

    Attributes
    ----------
    centres : ndarray, shape (K, 3), float
        Assembly centres in the reference frame (um); the first ``n_shared`` are shared.
    shared : ndarray, shape (K,), bool
    expressed : ndarray, shape (F, K), bool
        Fish ``f`` has assembly ``k`` (all fish for shared ones, one fish for private ones).
    radius_um : float
    weights : list of ndarray (K, N_f), float32
        Planted weights per fish (zero rows for assemblies the fish does not have).
    activity : list of ndarray (T_f, K), float32
        On/off per frame (zero columns for assemblies the fish does not have).
    background : list of ndarray (N_f,), float32
        Background spike probabilities per fish.
    params : dict
    """

    centres: np.ndarray
    shared: np.ndarray
    expressed: np.ndarray
    radius_um: float
    weights: list
    activity: list
    params: dict = field(default_factory=dict)
    background: list = field(default_factory=list)

    @property
    def n_fish(self) -> int:
        return int(self.expressed.shape[0])

    @property
    def n_assemblies(self) -> int:
        return int(self.centres.shape[0])


def _cohort_rng(seed, *keys):
    return np.random.default_rng(np.random.SeedSequence([int(seed), 77, *map(int, keys)]))


def _fish_geometry(rng, N):
    from raysearch.data import synthetic as syn

    d = rng.standard_normal((N, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    local = d * (rng.random(N) ** (1.0 / 3.0))[:, None] * syn._SEMI_AXES
    band = np.clip(
        ((syn._SEMI_AXES[0] - local[:, 0]) / (2 * syn._SEMI_AXES[0]) * 6).astype(int), 0, 5
    )
    region = band * 2 + (local[:, 1] >= 0).astype(int)
    labels = np.zeros((N, len(syn.REGION_NAMES)), dtype=bool)
    labels[np.arange(N), region] = True
    angle = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    micro = local @ rot.T + np.array([620.0, 300.0, 160.0]) + rng.uniform(-20, 20, 3)
    return local, micro, labels


def _draw_centres(rng, n, radius, existing):
    """n centres inside the ellipsoid shrunk by ``radius``, >= 2 radius from each other and
    ``existing``."""
    from raysearch.data import synthetic as syn

    inner = syn._SEMI_AXES - radius
    if np.any(inner <= 0):
        raise ConfigError(f"radius_um {radius} is too large for the synthetic brain")
    out = list(existing)
    got = []
    for _ in range(20000):
        if len(got) == n:
            break
        p = rng.uniform(-1, 1, 3) * inner
        if np.sum((p / inner) ** 2) > 1:
            continue
        if all(np.linalg.norm(p - q) >= 2.0 * radius for q in out):
            out.append(p)
            got.append(p)
    if len(got) < n:
        raise ConfigError(
            f"cannot place {n} more assemblies of radius {radius} um apart in the "
            "synthetic brain; use fewer assemblies or a smaller radius_um"
        )
    return np.array(got).reshape(-1, 3)


def make_synthetic_cohort(
    n_fish: int = 3,
    n_neurons: int = 3000,
    n_frames: int = 2000,
    n_shared: int = 4,
    n_private: int = 2,
    seed: int = 0,
    *,
    radius_um: float = 70.0,
    frame_rate: float = 4.0,
    mean_rate: float = 0.04,
    on_fraction: float = 0.08,
    bout_s=(1.0, 3.0),
    gain: float = 5.0,
    jitter_um: float = 3.0,
):
    """Build a synthetic cohort in memory (see the module notes for the generative model).

    Parameters
    ----------
    n_fish, n_neurons, n_frames : int
        F, and N and T of every fish.
    n_shared, n_private : int
        Assemblies common to all fish, and private to each fish.
    seed : int
    radius_um : float
        Radius of an assembly ball in the reference frame.
    frame_rate, mean_rate : float
        Hz; target mean spike probability of the background.
    on_fraction : float
        Mean stationary on-fraction of an assembly (each drawn in ``on_fraction * U(0.6, 1.4)``).
    bout_s : (float, float)
        Mean on-bout duration range in seconds.
    gain : float
        Member weight scale (logit units).
    jitter_um : float
        S.d. of a per-neuron registration error added to the reference coordinates.

    Returns
    -------
    recordings : list of Recording
    truth : CohortTruth
    """
    from raysearch.data import synthetic as syn

    for name, v, lo in (
        ("n_fish", n_fish, 2),
        ("n_neurons", n_neurons, 50),
        ("n_frames", n_frames, 20),
        ("n_shared", n_shared, 0),
        ("n_private", n_private, 0),
        ("seed", seed, 0),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if n_shared + n_private < 1:
        raise ConfigError("the cohort needs at least one assembly (n_shared + n_private >= 1)")
    if not 0 < on_fraction < 0.5 or not 0 < mean_rate < 0.5 or not radius_um > 0:
        raise ConfigError("need 0 < on_fraction < 0.5, 0 < mean_rate < 0.5 and radius_um > 0")
    F, N, T = int(n_fish), int(n_neurons), int(n_frames)
    crng = _cohort_rng(seed, 0)
    shared_c = _draw_centres(crng, n_shared, radius_um, [])
    cents = [shared_c]
    priv_rngs = [_cohort_rng(seed, 1, f) for f in range(F)]
    for f in range(F):
        cents.append(_draw_centres(priv_rngs[f], n_private, radius_um, np.concatenate(cents)))
    centres = np.concatenate(cents)
    K = centres.shape[0]
    shared = np.zeros(K, dtype=bool)
    shared[:n_shared] = True
    expressed = np.zeros((F, K), dtype=bool)
    expressed[:, :n_shared] = True
    for f in range(F):
        expressed[f, n_shared + f * n_private : n_shared + (f + 1) * n_private] = True

    recs, weights, acts, bgs = [], [], [], []
    for f in range(F):
        rng = _cohort_rng(seed, 2, f)
        local, micro, labels = _fish_geometry(rng, N)
        ref = local + syn._REF_CENTRE + rng.normal(0, jitter_um, (N, 3))
        W = np.zeros((K, N), dtype=np.float32)
        for k in np.flatnonzero(expressed[f]):
            idx = np.flatnonzero(np.linalg.norm(local - centres[k], axis=1) <= radius_um)
            W[k, idx] = gain * rng.uniform(0.6, 1.4, idx.size)
        f_on = np.clip(on_fraction * rng.uniform(0.6, 1.4, K), 1e-3, 0.5)
        p_off = 1.0 / np.maximum(rng.uniform(bout_s[0], bout_s[1], K) * frame_rate, 1.0)
        p_on = np.clip(p_off * f_on / (1 - f_on), 1e-6, 1.0)
        state = rng.random(K) < f_on
        u = rng.random((T, K))
        A = np.empty((T, K), dtype=np.float32)
        for t in range(T):
            state = np.where(state, u[t] >= p_off, u[t] < p_on)
            A[t] = state
        A[:, ~expressed[f]] = 0
        spread = rng.lognormal(0.0, 0.8, N)
        bg = np.clip(mean_rate * spread / spread.mean(), 0.001, 0.3)
        bias = np.log(bg / (1 - bg)).astype(np.float32)
        spikes = np.empty((T, N), dtype=bool)
        nz = [np.flatnonzero(W[k]) for k in range(K)]
        for c, t0 in enumerate(range(0, T, 256)):
            t1 = min(T, t0 + 256)
            logits = np.broadcast_to(bias, (t1 - t0, N)).copy()
            for k, idx in enumerate(nz):
                on = np.flatnonzero(A[t0:t1, k])
                if on.size and idx.size:
                    logits[np.ix_(on, idx)] += W[k, idx]
            spikes[t0:t1] = _cohort_rng(seed, 3, f, c).random(
                (t1 - t0, N), dtype=np.float32
            ) < syn._sigmoid(logits)
        recs.append(
            Recording(
                spikes=spikes,
                dff=None,
                coords=micro.astype(np.float32),
                ref_coords=ref.astype(np.float32),
                times=np.arange(T, dtype=np.float64) / frame_rate,
                labels=labels,
                region_names=list(syn.REGION_NAMES),
                source=f"synthetic-cohort(seed={seed}, fish={f})",
                layout="synthetic",
            )
        )
        weights.append(W)
        acts.append(A)
        bgs.append(bg.astype(np.float32))
    params = dict(
        n_fish=F,
        n_neurons=N,
        n_frames=T,
        n_shared=int(n_shared),
        n_private=int(n_private),
        seed=int(seed),
        radius_um=float(radius_um),
        frame_rate=float(frame_rate),
        mean_rate=float(mean_rate),
        on_fraction=float(on_fraction),
        bout_s=[float(b) for b in bout_s],
        gain=float(gain),
        jitter_um=float(jitter_um),
    )
    truth = CohortTruth(
        centres=(centres + syn._REF_CENTRE),
        shared=shared,
        expressed=expressed,
        radius_um=float(radius_um),
        weights=weights,
        activity=acts,
        params=params,
        background=bgs,
    )
    return recs, truth


def write_synthetic_cohort(directory, force: bool = False, **kwargs) -> list[Path]:
    """Write a synthetic cohort: ``fish{f}.h5`` (cRBM layout, spikes, with a ``/GroundTruth``
    group of that fish) and ``cohort.json`` (which assemblies are shared, centres, settings).

    Written into a temporary folder beside ``directory`` that is renamed at the end, so a failure
    leaves nothing behind. Keyword arguments as :func:`make_synthetic_cohort`.

    Returns
    -------
    list of Path
        The fish files.
    """
    import h5py

    directory = Path(directory)
    if directory.exists() and not force:
        raise InputError(f"{directory}: already exists; pass --force to overwrite it")
    if not directory.parent.exists():
        raise InputError(f"{directory}: the folder {directory.parent} does not exist")
    recs, truth = make_synthetic_cohort(**kwargs)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", dir=directory.parent))
    try:
        for f, rec in enumerate(recs):
            with h5py.File(tmp / f"fish{f}.h5", "w") as h:
                brain = h.create_group("Data/Brain")
                brain.create_group("Analysis").create_dataset(
                    "ThresholdedSpikes", data=rec.spikes.view(np.uint8), compression="gzip"
                )
                for name, xyz in (
                    ("Coordinates", rec.coords),
                    ("ZBrainCoordinates", rec.ref_coords),
                ):
                    d = brain.create_dataset(name, data=(xyz.T / 1000.0).astype(np.float32))
                    d.attrs["unit"] = "mm"
                tms = brain.create_dataset("Times", data=rec.times[:, None])
                tms.attrs["unit"] = "s"
                lab = brain.create_dataset("Labels", data=rec.labels.T.astype(np.uint8))
                lab.attrs["region_names"] = json.dumps(rec.region_names)
                # the group of a single synthetic fish (raysearch.data.synthetic.load_ground_truth
                # reads it); region matrices are not planted here and are left at 0
                R = len(rec.region_names)
                gt = h.create_group("GroundTruth")
                gt.attrs["params"] = json.dumps(dict(truth.params, fish=f))
                gt.attrs["region_names"] = json.dumps(rec.region_names)
                gt.create_dataset(
                    "membership", data=(truth.weights[f] != 0).astype(np.uint8), compression="gzip"
                )
                gt.create_dataset("region_coupling", data=np.zeros((R, R)))
                gt.create_dataset("structural", data=np.zeros((R, R)))
                gt.create_dataset("background", data=truth.background[f])
                gt.create_dataset("weights", data=truth.weights[f], compression="gzip")
                gt.create_dataset(
                    "activity", data=truth.activity[f].astype(np.uint8), compression="gzip"
                )
        meta = dict(
            params=truth.params,
            centres_um=truth.centres.tolist(),
            shared=truth.shared.tolist(),
            expressed=truth.expressed.tolist(),
            radius_um=truth.radius_um,
            fish=[f"fish{f}.h5" for f in range(len(recs))],
        )
        (tmp / "cohort.json").write_text(json.dumps(meta, indent=2))
        if directory.exists():
            import shutil

            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [directory / f"fish{f}.h5" for f in range(len(recs))]


def load_cohort_truth(directory) -> CohortTruth:
    """Read the truth written by :func:`write_synthetic_cohort`."""
    import h5py

    directory = Path(directory)
    meta_path = directory / "cohort.json"
    if not meta_path.exists():
        raise InputError(f"{directory}: no cohort.json (not written by `raysearch synth-cohort`)")
    meta = json.loads(meta_path.read_text())
    W, A = [], []
    for name in meta["fish"]:
        with h5py.File(directory / name, "r") as h:
            W.append(h["GroundTruth/weights"][()].astype(np.float32))
            A.append(h["GroundTruth/activity"][()].astype(np.float32))
    return CohortTruth(
        centres=np.asarray(meta["centres_um"]),
        shared=np.asarray(meta["shared"]),
        expressed=np.asarray(meta["expressed"]),
        radius_um=float(meta["radius_um"]),
        weights=W,
        activity=A,
        params=meta["params"],
    )
