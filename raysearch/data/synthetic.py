"""A synthetic larval-zebrafish recording with planted assemblies and its ground truth.

The synthetic fish is the embedded default of raysearch: everything runs on it with no download.
It is written in the published cRBM HDF5 layout (``Data/Brain/...``, see
:mod:`raysearch.data.recordings`) so the same loader reads it, plus a ``/GroundTruth`` group that the
loader ignores and tests use.

Generative model (all random draws derive from ``seed``; the result does not depend on how the
work is chunked):

* geometry: ``N`` points uniform in an ellipsoid with semi-axes (500, 250, 150) um (x rostro-caudal,
  y left-right, z dorso-ventral); reference-brain coordinates put the ellipsoid centre at
  (560, 250, 140) um (all positive, like ZBrain); microscope coordinates are the same points
  rotated by a few degrees about z and shifted.
* regions: 12 regions, 6 bands along x (``Telencephalon, Diencephalon, Tectum, Cerebellum,
  Rhombencephalon_ant, Rhombencephalon_post`` from rostral to caudal), each split into ``_L``
  (y < 0) and ``_R`` (y >= 0).
* assemblies: ``K`` assemblies of ``max(min_assembly_size, round(assembly_fraction * N))`` neurons,
  the nearest neurons to a centre (spatially compact). A share ``bilateral_fraction`` has twin
  centres mirrored across the midline (half the members on each side); a share
  ``overlap_fraction`` is centred on the rim of an earlier assembly so that the two share members.
  Weights (logit units) are ``gain * U(0.6, 1.4)`` on members, 0 elsewhere.
* assembly activity: one two-state Markov chain per assembly; on-bouts last ``U(*bout_s)`` seconds
  on average and the stationary on-fraction is set so that assemblies carry about 60 % of the
  target spike rate (capped at 0.15).
* spikes: ``P(s_it = 1) = sigmoid(b_i + sum_k w_ki a_tk)`` with background rates ``sigmoid(b_i)``
  log-normally spread and scaled so that the mean spike probability is about ``mean_rate``.
* dF/F: ``c_t = g_i c_{t-1} + s_t`` with ``g_i = exp(-1 / (fs tau_i))``, ``tau_i ~ U(1, 2)`` s,
  ``dff = A_i c + noise + drift`` with ``A_i ~ U(0.5, 1)``, noise s.d. ``A_i / U(3, 5)`` and a slow
  sinusoidal drift.

Ground truth: ``membership`` (K, N) bool, ``weights`` (K, N) float32, ``activity`` (T, K) float32 0/1,
``region_coupling`` (R, R): ``sum_k m_k m_k^T`` normalised to max 1, where ``m_k[r]`` is the share of
assembly ``k``'s weight in region ``r`` (so bilateral assemblies couple left/right twins), and
``structural`` (R, R): a mock connectome, symmetric with zero diagonal, ``0.6 * coupling + 0.4 *
exp(-distance / 250 um)`` plus noise, clipped at 0.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raysearch.data.recordings import Recording
from raysearch.errors import ConfigError, InputError

__all__ = [
    "GroundTruth",
    "REGION_NAMES",
    "make_synthetic_recording",
    "write_synthetic_recording",
    "load_ground_truth",
]

_BANDS = (
    "Telencephalon",
    "Diencephalon",
    "Tectum",
    "Cerebellum",
    "Rhombencephalon_ant",
    "Rhombencephalon_post",
)
REGION_NAMES = [f"{b}_{side}" for b in _BANDS for side in ("L", "R")]
_SEMI_AXES = np.array([500.0, 250.0, 150.0])
_REF_CENTRE = np.array([560.0, 250.0, 140.0])
_CHUNK = 256  # frames per random-number block (fixed: results do not depend on I/O chunking)
_STREAM_STATIC, _STREAM_SPIKES, _STREAM_DFF = 0, 1, 2


@dataclass
class GroundTruth:
    """What the synthetic fish was built from.

    Attributes
    ----------
    membership : ndarray, shape (K, N), bool
        Neuron ``i`` belongs to assembly ``k``.
    weights : ndarray, shape (K, N), float32
        Logit increment of neuron ``i`` when assembly ``k`` is on (0 for non-members).
    activity : ndarray, shape (T, K), float32
        Assembly on (1) / off (0) per frame.
    region_coupling : ndarray, shape (R, R), float64
        Planted region-level coupling (symmetric, max 1).
    structural : ndarray, shape (R, R), float64
        Mock structural connectome (symmetric, zero diagonal), correlated with ``region_coupling``.
    region_names : list of str
    background : ndarray, shape (N,), float32
        Background spike probability per neuron.
    params : dict
        Every generator setting (JSON-able), including the seed.
    """

    membership: np.ndarray
    weights: np.ndarray
    activity: np.ndarray
    region_coupling: np.ndarray
    structural: np.ndarray
    region_names: list[str]
    background: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n_assemblies(self) -> int:
        return int(self.membership.shape[0])


def _default_n_assemblies(n_neurons: int) -> int:
    return int(np.clip(n_neurons // 100, 4, 100))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, keys)]))


def _check_params(n_neurons, n_frames, n_assemblies, frame_rate, mean_rate, assembly_size):
    if not isinstance(n_neurons, (int, np.integer)) or n_neurons < 20:
        raise ConfigError(f"n_neurons must be an integer >= 20, got {n_neurons!r}")
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 10:
        raise ConfigError(f"n_frames must be an integer >= 10, got {n_frames!r}")
    if not isinstance(n_assemblies, (int, np.integer)) or n_assemblies < 1:
        raise ConfigError(f"n_assemblies must be a positive integer, got {n_assemblies!r}")
    if not frame_rate > 0:
        raise ConfigError(f"frame_rate must be > 0 Hz, got {frame_rate!r}")
    if not 0 < mean_rate < 0.5:
        raise ConfigError(f"mean_rate must be in (0, 0.5), got {mean_rate!r}")
    if assembly_size > n_neurons // 2:
        raise ConfigError(
            f"assemblies of {assembly_size} neurons do not fit in {n_neurons} neurons; "
            "use more neurons or a smaller min_assembly_size"
        )


def _static_model(
    n_neurons,
    n_frames,
    n_assemblies,
    seed,
    frame_rate,
    mean_rate,
    assembly_fraction,
    min_assembly_size,
    bilateral_fraction,
    overlap_fraction,
    bout_s,
    gain,
):
    """Everything except the per-frame spikes and dF/F (small: O(N K + T K))."""
    rng = _rng(seed, _STREAM_STATIC)
    N, T, K = int(n_neurons), int(n_frames), int(n_assemblies)
    # geometry: uniform in the ellipsoid
    direction = rng.standard_normal((N, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    radius = rng.random(N) ** (1.0 / 3.0)
    local = direction * radius[:, None] * _SEMI_AXES  # (N, 3) um, centred
    ref = local + _REF_CENTRE
    angle = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    micro = local @ rot.T + np.array([620.0, 300.0, 160.0]) + rng.uniform(-20, 20, 3)
    # regions: 6 bands along x (rostral = +x first), split by the sign of y
    band = np.clip(((_SEMI_AXES[0] - local[:, 0]) / (2 * _SEMI_AXES[0]) * 6).astype(int), 0, 5)
    side = (local[:, 1] >= 0).astype(int)
    region = band * 2 + side
    R = len(REGION_NAMES)
    labels = np.zeros((N, R), dtype=bool)
    labels[np.arange(N), region] = True

    # assemblies
    size = max(int(min_assembly_size), int(round(assembly_fraction * N)))
    _check_params(N, T, K, frame_rate, mean_rate, size)
    n_bilateral = int(round(bilateral_fraction * K))
    n_overlap = int(round(overlap_fraction * K)) if K >= 3 else 0
    kinds = np.array(["single"] * K, dtype=object)
    order = rng.permutation(K)
    kinds[order[:n_bilateral]] = "bilateral"
    # overlapping ones are never the first assembly (they need a predecessor)
    cand = [k for k in order[n_bilateral:] if k > 0]
    kinds[cand[:n_overlap]] = "overlap"
    membership = np.zeros((K, N), dtype=bool)
    weights = np.zeros((K, N), dtype=np.float32)
    covered = np.zeros(N, dtype=bool)
    centres = np.zeros((K, 3))

    def nearest(point, m):
        d = np.sum((local - point) ** 2, axis=1)
        return np.argpartition(d, m - 1)[:m]

    for k in range(K):
        if kinds[k] == "overlap":
            prev = rng.integers(0, k)
            members_prev = np.flatnonzero(membership[prev])
            d = np.linalg.norm(local[members_prev] - centres[prev], axis=1)
            # a neuron half-way to the rim of the earlier assembly
            j = members_prev[np.argsort(d)[len(d) // 2]]
            centre = local[j]
            idx = nearest(centre, size)
        else:
            free = np.flatnonzero(~covered)
            pool = free if free.size else np.arange(N)
            if kinds[k] == "bilateral":
                # keep the twin centres well off the midline
                off = pool[np.abs(local[pool, 1]) > 0.25 * _SEMI_AXES[1]]
                pool = off if off.size else pool
            centre = local[rng.choice(pool)]
            if kinds[k] == "bilateral":
                twin = centre * np.array([1.0, -1.0, 1.0])
                half = size // 2
                idx = np.union1d(nearest(centre, size - half), nearest(twin, half))
            else:
                idx = nearest(centre, size)
        centres[k] = centre
        membership[k, idx] = True
        weights[k, idx] = gain * rng.uniform(0.6, 1.4, idx.size)
        covered[idx] = True

    # assembly dynamics: two-state Markov chains
    slots = membership.sum()
    q_mean = 0.7  # typical member firing probability when the assembly is on
    f_target = min(0.15, 0.6 * mean_rate * N / (slots * q_mean))
    f_on = np.clip(f_target * rng.uniform(0.6, 1.4, K), 1e-3, 0.5)
    bout = rng.uniform(bout_s[0], bout_s[1], K) * frame_rate  # mean on-bout in frames
    p_off = 1.0 / np.maximum(bout, 1.0)
    p_on = np.clip(p_off * f_on / (1 - f_on), 1e-6, 1.0)
    state = rng.random(K) < f_on
    u = rng.random((T, K))
    activity = np.empty((T, K), dtype=np.float32)
    for t in range(T):
        state = np.where(state, u[t] >= p_off, u[t] < p_on)
        activity[t] = state

    # background rates, calibrated so that the mean spike probability is ~mean_rate
    spread = rng.lognormal(0.0, 0.8, N)
    spread /= spread.mean()
    bg_mean = max(0.005, mean_rate - slots * (f_on.mean()) * q_mean / N)
    background = np.clip(bg_mean * spread, 0.001, 0.3)
    # three correction steps using the exact expected rate given the planted activity
    for _ in range(3):
        b = np.log(background / (1 - background))
        expected = _expected_rate(b, weights, membership, activity)
        scale = np.clip((mean_rate - (expected - background.mean())) / background.mean(), 0.2, 5)
        background = np.clip(background * scale, 0.001, 0.3)
    bias = np.log(background / (1 - background)).astype(np.float32)

    # calcium parameters
    tau = rng.uniform(1.0, 2.0, N)
    decay = np.exp(-1.0 / (frame_rate * tau)).astype(np.float32)
    amp = rng.uniform(0.5, 1.0, N).astype(np.float32)
    noise_sd = (amp / rng.uniform(3.0, 5.0, N)).astype(np.float32)
    drift_amp = rng.uniform(0.0, 0.1, N).astype(np.float32)
    drift_period = rng.uniform(200.0, 600.0, N)
    drift_phase = rng.uniform(0, 2 * np.pi, N)

    # region-level ground truth
    mass = np.zeros((K, R))
    for r in range(R):
        mass[:, r] = weights[:, region == r].sum(1)
    mass /= mass.sum(1, keepdims=True)
    coupling = mass.T @ mass
    coupling /= coupling.max()
    region_centres = np.array(
        [local[region == r].mean(0) if np.any(region == r) else np.zeros(3) for r in range(R)]
    )
    dist = np.linalg.norm(region_centres[:, None] - region_centres[None], axis=-1)
    noise = rng.normal(0, 0.05, (R, R))
    structural = 0.6 * coupling + 0.4 * np.exp(-dist / 250.0) + (noise + noise.T) / 2
    structural = np.clip(structural, 0.0, None)
    np.fill_diagonal(structural, 0.0)

    return dict(
        ref=ref.astype(np.float32),
        micro=micro.astype(np.float32),
        labels=labels,
        membership=membership,
        weights=weights,
        activity=activity,
        bias=bias,
        background=background.astype(np.float32),
        decay=decay,
        amp=amp,
        noise_sd=noise_sd,
        drift_amp=drift_amp,
        drift_period=drift_period,
        drift_phase=drift_phase,
        coupling=coupling,
        structural=structural,
        kinds=list(kinds),
        size=size,
    )


def _expected_rate(b, weights, membership, activity):
    """Mean spike probability over neurons and frames, by exact per-pattern enumeration."""
    K = weights.shape[0]
    # unique on-patterns (few: assemblies are rarely on together)
    pats, counts = np.unique(activity.astype(bool), axis=0, return_counts=True)
    total = 0.0
    for p, c in zip(pats, counts):
        logits = b + (weights[p].sum(0) if p.any() else 0.0)
        total += c * _sigmoid(logits).mean()
    return total / activity.shape[0] if K else float(_sigmoid(b).mean())


def _frame_blocks(model, n_frames, seed, frame_rate, signals):
    """Yield (t0, t1, spikes bool (b, N), dff float32 (b, N) | None) blocks of _CHUNK frames."""
    W, bias = model["weights"], model["bias"]
    act = model["activity"]
    N = bias.size
    nz = [np.flatnonzero(W[k]) for k in range(W.shape[0])]
    calcium = np.zeros(N, dtype=np.float32)
    decay, amp, noise_sd = model["decay"], model["amp"], model["noise_sd"]
    want_dff = "dff" in signals
    for c, t0 in enumerate(range(0, n_frames, _CHUNK)):
        t1 = min(n_frames, t0 + _CHUNK)
        b = t1 - t0
        logits = np.broadcast_to(bias, (b, N)).copy()
        for k, idx in enumerate(nz):
            on = np.flatnonzero(act[t0:t1, k])
            if on.size:
                logits[np.ix_(on, idx)] += W[k, idx]
        prob = _sigmoid(logits)
        u = _rng(seed, _STREAM_SPIKES, c).random((b, N), dtype=np.float32)
        spikes = u < prob
        del u, prob, logits
        dff = None
        if want_dff:
            rng = _rng(seed, _STREAM_DFF, c)
            dff = rng.standard_normal((b, N), dtype=np.float32)
            dff *= noise_sd
            t = (np.arange(t0, t1) / frame_rate)[:, None]
            dff += (
                model["drift_amp"]
                * np.sin(2 * np.pi * t / model["drift_period"] + model["drift_phase"])
            ).astype(np.float32)
            for i in range(b):
                calcium *= decay
                calcium += spikes[i]
                dff[i] += amp * calcium
        yield t0, t1, spikes, dff


def _settings(
    n_neurons,
    n_frames,
    n_assemblies,
    seed,
    frame_rate,
    mean_rate,
    assembly_fraction,
    min_assembly_size,
    bilateral_fraction,
    overlap_fraction,
    bout_s,
    gain,
):
    if n_assemblies is None and isinstance(n_neurons, (int, np.integer)):
        n_assemblies = _default_n_assemblies(int(n_neurons))
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    for name, v in (
        ("n_neurons", n_neurons),
        ("n_frames", n_frames),
        ("n_assemblies", n_assemblies),
    ):
        if not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {v!r}")
    if not (isinstance(bout_s, (tuple, list)) and len(bout_s) == 2 and 0 < bout_s[0] <= bout_s[1]):
        raise ConfigError(f"bout_s must be (min, max) seconds with 0 < min <= max, got {bout_s!r}")
    for name, v in (
        ("bilateral_fraction", bilateral_fraction),
        ("overlap_fraction", overlap_fraction),
    ):
        if not 0 <= v <= 1:
            raise ConfigError(f"{name} must be in [0, 1], got {v!r}")
    if bilateral_fraction + overlap_fraction > 1:
        raise ConfigError("bilateral_fraction + overlap_fraction must be <= 1")
    if not 0 < assembly_fraction < 0.5:
        raise ConfigError(f"assembly_fraction must be in (0, 0.5), got {assembly_fraction!r}")
    return dict(
        n_neurons=int(n_neurons),
        n_frames=int(n_frames),
        n_assemblies=int(n_assemblies),
        seed=int(seed),
        frame_rate=float(frame_rate),
        mean_rate=float(mean_rate),
        assembly_fraction=float(assembly_fraction),
        min_assembly_size=int(min_assembly_size),
        bilateral_fraction=float(bilateral_fraction),
        overlap_fraction=float(overlap_fraction),
        bout_s=[float(bout_s[0]), float(bout_s[1])],
        gain=float(gain),
    )


def _ground_truth(model, settings):
    return GroundTruth(
        membership=model["membership"],
        weights=model["weights"],
        activity=model["activity"],
        region_coupling=model["coupling"],
        structural=model["structural"],
        region_names=list(REGION_NAMES),
        background=model["background"],
        params=dict(settings, assembly_kinds=model["kinds"], assembly_size=model["size"]),
    )


def make_synthetic_recording(
    n_neurons: int = 1000,
    n_frames: int = 2000,
    n_assemblies: int | None = None,
    seed: int = 0,
    *,
    frame_rate: float = 4.0,
    mean_rate: float = 0.04,
    assembly_fraction: float = 0.01,
    min_assembly_size: int = 8,
    bilateral_fraction: float = 0.25,
    overlap_fraction: float = 0.1,
    bout_s: tuple[float, float] = (1.0, 3.0),
    gain: float = 5.0,
    signals=("spikes", "dff"),
):
    """Build a synthetic fish in memory.

    Parameters
    ----------
    n_neurons, n_frames : int
        N and T.
    n_assemblies : int, optional
        K; default ``clip(N // 100, 4, 100)``.
    seed : int
        Everything is deterministic given the seed (and the other settings).
    frame_rate : float
        Hz.
    mean_rate : float
        Target mean spike probability per neuron-frame.
    assembly_fraction, min_assembly_size : float, int
        Assembly size is ``max(min_assembly_size, round(assembly_fraction * N))``.
    bilateral_fraction, overlap_fraction : float
        Shares of assemblies that are bilateral / overlap an earlier one.
    bout_s : (float, float)
        Mean on-bout duration of each assembly is drawn uniformly from this range (s).
    gain : float
        Scale of the member weights (logit units).
    signals : tuple of str
        Which of ``"spikes"``, ``"dff"`` to fill (the other is None).

    Returns
    -------
    recording : Recording
        spikes (T, N) bool, dff (T, N) float32, coords/ref_coords (N, 3) um, 12 regions.
    truth : GroundTruth
    """
    settings = _settings(
        n_neurons,
        n_frames,
        n_assemblies,
        seed,
        frame_rate,
        mean_rate,
        assembly_fraction,
        min_assembly_size,
        bilateral_fraction,
        overlap_fraction,
        bout_s,
        gain,
    )
    model = _static_model(**settings)
    T, N = settings["n_frames"], settings["n_neurons"]
    spikes = np.empty((T, N), dtype=bool) if "spikes" in signals else None
    dff = np.empty((T, N), dtype=np.float32) if "dff" in signals else None
    for t0, t1, s, d in _frame_blocks(model, T, seed, frame_rate, signals):
        if spikes is not None:
            spikes[t0:t1] = s
        if dff is not None:
            dff[t0:t1] = d
    rec = Recording(
        spikes=spikes,
        dff=dff,
        coords=model["micro"],
        ref_coords=model["ref"],
        times=np.arange(T, dtype=np.float64) / frame_rate,
        labels=model["labels"],
        region_names=list(REGION_NAMES),
        source=f"synthetic(seed={int(seed)})",
        layout="synthetic",
    )
    return rec, _ground_truth(model, settings)


def write_synthetic_recording(
    path,
    n_neurons: int = 1000,
    n_frames: int = 2000,
    n_assemblies: int | None = None,
    seed: int = 0,
    **kwargs,
):
    """Write a synthetic fish in the published cRBM layout plus a ``/GroundTruth`` group.

    Streams frames to disk in blocks (peak memory ~ a few hundred MB even for a whole fish) and
    writes to a temporary file in the same directory that is renamed at the end, so a failure
    leaves nothing behind. Same keyword arguments as :func:`make_synthetic_recording`; the
    written arrays equal the in-memory ones for the same settings.

    Layout (shapes as h5py sees them): ``Data/Brain/Analysis/ThresholdedSpikes`` (T, N) uint8,
    ``Data/Brain/Analysis/DFF_align`` (T, N) float32, ``Data/Brain/Coordinates`` and
    ``Data/Brain/ZBrainCoordinates`` (3, N) float32 mm, ``Data/Brain/Times`` (T, 1) float64 s,
    ``Data/Brain/Labels`` (R, N) uint8 with attribute ``region_names`` (JSON list).

    Returns
    -------
    pathlib.Path
    """
    import h5py

    signals = tuple(kwargs.pop("signals", ("spikes", "dff")))
    settings = _settings_from_kwargs(n_neurons, n_frames, n_assemblies, seed, kwargs)
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give a file name such as {path / 'fish.h5'}")
    if not path.parent.exists():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    model = _static_model(**settings)
    T, N = settings["n_frames"], settings["n_neurons"]
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["raysearch_synthetic"] = json.dumps(settings)
            brain = f.create_group("Data/Brain")
            ana = brain.create_group("Analysis")
            ds_s = (
                ana.create_dataset("ThresholdedSpikes", (T, N), dtype="u1")
                if "spikes" in signals
                else None
            )
            ds_d = ana.create_dataset("DFF_align", (T, N), dtype="f4") if "dff" in signals else None
            for t0, t1, s, d in _frame_blocks(
                model, T, settings["seed"], settings["frame_rate"], signals
            ):
                if ds_s is not None:
                    ds_s.write_direct(s.view(np.uint8), dest_sel=np.s_[t0:t1])
                if ds_d is not None:
                    ds_d.write_direct(d, dest_sel=np.s_[t0:t1])
            for name, xyz in (("Coordinates", model["micro"]), ("ZBrainCoordinates", model["ref"])):
                d = brain.create_dataset(name, data=(xyz.T / 1000.0).astype(np.float32))
                d.attrs["unit"] = "mm"
            tms = brain.create_dataset(
                "Times", data=(np.arange(T, dtype=np.float64) / settings["frame_rate"])[:, None]
            )
            tms.attrs["unit"] = "s"
            lab = brain.create_dataset("Labels", data=model["labels"].T.astype(np.uint8))
            lab.attrs["region_names"] = json.dumps(REGION_NAMES)
            gt = f.create_group("GroundTruth")
            gt.attrs["params"] = json.dumps(
                dict(settings, assembly_kinds=model["kinds"], assembly_size=model["size"])
            )
            gt.attrs["region_names"] = json.dumps(REGION_NAMES)
            gt.create_dataset(
                "membership", data=model["membership"].astype(np.uint8), compression="gzip"
            )
            gt.create_dataset("weights", data=model["weights"], compression="gzip")
            gt.create_dataset(
                "activity", data=model["activity"].astype(np.uint8), compression="gzip"
            )
            gt.create_dataset("region_coupling", data=model["coupling"])
            gt.create_dataset("structural", data=model["structural"])
            gt.create_dataset("background", data=model["background"])
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: writing failed, nothing was written ({exc})") from None
        raise
    return path


_DEFAULTS = dict(
    frame_rate=4.0,
    mean_rate=0.04,
    assembly_fraction=0.01,
    min_assembly_size=8,
    bilateral_fraction=0.25,
    overlap_fraction=0.1,
    bout_s=(1.0, 3.0),
    gain=5.0,
)


def _settings_from_kwargs(n_neurons, n_frames, n_assemblies, seed, kwargs):
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise ConfigError(
            f"unknown synthetic-recording setting(s): {sorted(unknown)}; known: {sorted(_DEFAULTS)}"
        )
    opts = dict(_DEFAULTS, **kwargs)
    return _settings(n_neurons, n_frames, n_assemblies, seed, **opts)


def load_ground_truth(path) -> GroundTruth:
    """Read the ``/GroundTruth`` group of a file written by :func:`write_synthetic_recording`.

    Raises
    ------
    InputError
        If the file cannot be read or has no ground truth.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read as HDF5 ({exc})") from None
    with f:
        if "GroundTruth" not in f:
            raise InputError(
                f"{path}: has no /GroundTruth group (only files written by "
                "`raysearch synth` carry ground truth)"
            )
        g = f["GroundTruth"]
        return GroundTruth(
            membership=g["membership"][()].astype(bool),
            weights=g["weights"][()].astype(np.float32),
            activity=g["activity"][()].astype(np.float32),
            region_coupling=g["region_coupling"][()],
            structural=g["structural"][()],
            region_names=json.loads(g.attrs["region_names"]),
            background=g["background"][()],
            params=json.loads(g.attrs["params"]),
        )
