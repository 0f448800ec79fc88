"""The synthetic fish: determinism, planted structure, file round trip of the ground truth."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from raysearch.data.recordings import load_recording
from raysearch.data.synthetic import (
    REGION_NAMES,
    load_ground_truth,
    make_synthetic_recording,
    write_synthetic_recording,
)
from raysearch.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def fish():
    return make_synthetic_recording(n_neurons=2000, n_frames=1200, seed=3)


def test_same_seed_same_fish_other_seed_other_fish():
    a, ga = make_synthetic_recording(300, 300, seed=5)
    b, gb = make_synthetic_recording(300, 300, seed=5)
    c, gc = make_synthetic_recording(300, 300, seed=6)
    assert np.array_equal(a.spikes, b.spikes) and np.array_equal(a.dff, b.dff)
    assert np.array_equal(a.coords, b.coords) and np.array_equal(ga.weights, gb.weights)
    assert np.array_equal(ga.activity, gb.activity)
    assert not np.array_equal(a.spikes, c.spikes)
    assert not np.array_equal(ga.membership, gc.membership)


def test_written_file_equals_memory_and_ground_truth_round_trips(tmp_path):
    rec, gt = make_synthetic_recording(400, 700, seed=1)  # 700 frames: several random blocks
    path = write_synthetic_recording(tmp_path / "f.h5", 400, 700, seed=1)
    got = load_recording(path)
    assert got.layout == "crbm"
    assert np.array_equal(got.spikes, rec.spikes)
    assert np.array_equal(got.dff, rec.dff)
    np.testing.assert_allclose(got.coords, rec.coords, atol=1e-3)  # stored in mm as float32
    np.testing.assert_allclose(got.ref_coords, rec.ref_coords, atol=1e-3)
    np.testing.assert_allclose(got.times, rec.times)
    assert got.region_names == REGION_NAMES
    assert np.array_equal(got.labels, rec.labels)
    back = load_ground_truth(path)
    assert np.array_equal(back.membership, gt.membership)
    assert np.array_equal(back.weights, gt.weights)
    assert np.array_equal(back.activity, gt.activity)
    np.testing.assert_allclose(back.region_coupling, gt.region_coupling)
    np.testing.assert_allclose(back.structural, gt.structural)
    assert back.params["seed"] == 1 and back.params["n_neurons"] == 400
    # the file is written completely, with no temp file left behind
    assert [p.name for p in tmp_path.iterdir()] == ["f.h5"]


def test_shapes_rate_and_regions(fish):
    rec, gt = fish
    T, N = 1200, 2000
    assert rec.spikes.shape == (T, N) and rec.spikes.dtype == bool
    assert rec.dff.shape == (T, N) and rec.dff.dtype == np.float32
    assert rec.coords.shape == (N, 3) and rec.labels.shape == (N, 12)
    assert abs(rec.frame_rate - 4.0) < 1e-9
    assert 0.03 < rec.spikes.mean() < 0.05
    rates = rec.spikes.mean(0)
    assert rates.max() > 5 * np.median(rates)  # heterogeneous, heavy upper tail
    assert np.all(rec.labels.sum(1) == 1)  # one region each
    # left/right by the sign of the midline axis, inside the ellipsoid
    local = rec.ref_coords - np.array([560.0, 250.0, 140.0])
    assert np.all(((local / [500.0, 250.0, 150.0]) ** 2).sum(1) <= 1 + 1e-4)
    left = rec.labels[:, 0::2].any(1)
    assert np.all(local[left, 1] < 0) and np.all(local[~left, 1] >= 0)


def test_assemblies_are_compact_bilateral_overlapping_and_drive_spikes(fish):
    rec, gt = fish
    K, N = gt.membership.shape
    assert K == 20
    assert np.all(gt.membership.sum(1) == 20)  # 1 % of 2000
    assert np.all((gt.weights != 0) == gt.membership)
    kinds = gt.params["assembly_kinds"]
    assert kinds.count("bilateral") == 5 and kinds.count("overlap") == 2
    spread_all = np.linalg.norm(rec.ref_coords - rec.ref_coords.mean(0), axis=1).mean()
    side = rec.ref_coords[:, 1] >= 250.0
    for k in range(K):
        m = gt.membership[k]
        if kinds[k] == "bilateral":
            assert side[m].any() and (~side[m]).any()
        else:
            xyz = rec.ref_coords[m]
            assert np.linalg.norm(xyz - xyz.mean(0), axis=1).mean() < 0.25 * spread_all
        on = gt.activity[:, k] > 0
        assert 0.02 < on.mean() < 0.4
        # members fire far more often when their assembly is on
        assert rec.spikes[on][:, m].mean() > 0.4 > 0.1 > rec.spikes[~on][:, m].mean()
    shared = gt.membership.astype(int) @ gt.membership.T.astype(int)
    np.fill_diagonal(shared, 0)
    assert shared.max() >= 3
    # persistence: mean on-bout at least 1 s (4 frames)
    a = gt.activity.astype(int)
    starts = ((a[1:] == 1) & (a[:-1] == 0)).sum()
    assert a.sum() / max(starts, 1) > 4


def test_region_coupling_and_structural_matrices(fish):
    rec, gt = fish
    R = len(REGION_NAMES)
    for m in (gt.region_coupling, gt.structural):
        assert m.shape == (R, R) and np.allclose(m, m.T)
    assert np.allclose(np.diag(gt.structural), 0) and gt.structural.min() >= 0
    assert gt.region_coupling.max() == pytest.approx(1.0)
    iu = np.triu_indices(R, 1)
    rho = spearmanr(gt.region_coupling[iu], gt.structural[iu]).statistic
    assert rho > 0.3
    # a bilateral assembly couples a left region with a right region
    k = gt.params["assembly_kinds"].index("bilateral")
    regs = np.unique(np.argmax(rec.labels[gt.membership[k]], axis=1))
    assert any(gt.region_coupling[i, j] > 0 for i in regs for j in regs if i % 2 != j % 2)


def test_dff_follows_spikes_with_calcium_decay(fish):
    rec, _ = fish
    s = rec.spikes.astype(np.float32)
    d = rec.dff
    # dF/F jumps on spike frames and decays after them, in each of the 20 most active neurons
    # (the jump is A_i ~ U(0.5, 1) less the decay of the calcium already there, so it varies per
    # neuron: one neuron's value depends on which neuron is the most active, and that changes
    # between NumPy versions, whose float32 promotion rules differ)
    dd = np.diff(d, axis=0)
    top = np.argsort(s.mean(0))[-20:]
    jump = np.array([dd[s[1:, i] > 0, i].mean() for i in top])
    rest = np.array([dd[s[1:, i] == 0, i].mean() for i in top])
    assert jump.min() > 0.15 and np.median(jump) > 0.25
    assert rest.max() < 0
    c = [np.corrcoef(s[:-1, j], d[1:, j])[0, 1] for j in range(0, 2000, 50)]
    assert np.median(c) > 0.2


def test_bad_settings_and_missing_ground_truth(tmp_path):
    with pytest.raises(ConfigError, match="n_neurons"):
        make_synthetic_recording(n_neurons=5)
    with pytest.raises(ConfigError, match="unknown synthetic"):
        write_synthetic_recording(tmp_path / "x.h5", 100, 100, bogus=1)
    with pytest.raises(InputError, match="does not exist"):
        write_synthetic_recording(tmp_path / "nodir" / "x.h5", 100, 100)
    assert list(tmp_path.iterdir()) == []
    import h5py

    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["a"] = np.zeros(3)
    with pytest.raises(InputError, match="no /GroundTruth"):
        load_ground_truth(tmp_path / "plain.h5")


def test_write_failures_are_input_errors_and_leave_nothing(tmp_path, monkeypatch):
    import raysearch.data.synthetic as S

    def no_rename(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(S.os, "replace", no_rename)
    with pytest.raises(InputError, match=r"f\.h5: writing failed, nothing was written"):
        write_synthetic_recording(tmp_path / "f.h5", 100, 30)
    assert list(tmp_path.iterdir()) == []

    def no_temp(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(S.tempfile, "mkstemp", no_temp)
    with pytest.raises(InputError, match=r"cannot write in .*Permission denied"):
        write_synthetic_recording(tmp_path / "f.h5", 100, 30)
