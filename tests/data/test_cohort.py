"""Joint datasets on the common voxel grid and the synthetic cohort (raysearch.data.cohort)."""

import json

import numpy as np
import pytest

from raysearch.analysis.cross_subject import truth_on_grid
from raysearch.data.cohort import (
    joint_dataset,
    load_cohort_truth,
    make_synthetic_cohort,
    write_synthetic_cohort,
)
from raysearch.data.preprocessing import preprocess
from raysearch.data.recordings import Recording
from raysearch.errors import ConfigError, InputError


def _rec(voxels, T=200, seed=0, per_voxel=3, name="f", regions=("A", "B"), ref=True):
    """A recording with ``per_voxel`` neurons in each listed 10-um voxel (x index) of the grid."""
    rng = np.random.default_rng(seed)
    xyz = np.array(
        [[10.0 * v + 1.0 + 8.0 * rng.random(), 5.0, 5.0] for v in voxels for _ in range(per_voxel)]
    )
    N = xyz.shape[0]
    labels = np.zeros((N, len(regions)), dtype=bool)
    labels[:, 0] = True
    dff = rng.normal(size=(T, N)).astype(np.float32) * (1 + np.arange(N))[None] + 3.0
    return Recording(
        spikes=None,
        dff=dff,
        coords=xyz.astype(np.float32),
        ref_coords=xyz.astype(np.float32) if ref else None,
        times=np.arange(T) / 4.0,
        labels=labels,
        region_names=list(regions),
        source=name,
        layout="synthetic",
    )


def test_common_grid_known_answer():
    a, b = _rec([0, 1, 2], seed=1, name="a"), _rec([1, 2, 3], seed=2, name="b", T=300)
    jd = joint_dataset([a, b], 10.0, signal="dff")
    # voxels present in both fish: x index 1 and 2
    assert jd.voxel_keys[:, 0].tolist() == [1, 2]
    np.testing.assert_allclose(jd.coords[:, 0], [15.0, 25.0])
    assert jd.present.all() and jd.n_fish == 2
    assert jd.n_neurons.tolist() == [6, 6]
    # frames: fish a's training frames, then fish b's; held-out segments of every fish
    pa, pb = (preprocess(r, signal="dff", voxel_um=10.0, transform="zscore") for r in (a, b))
    assert jd.fish_train.tolist() == [0] * pa.n_train + [1] * pb.n_train
    assert jd.fish_test.tolist() == [0] * pa.n_test + [1] * pb.n_test
    np.testing.assert_array_equal(jd.train[: pa.n_train], pa.train[:, [1, 2]])
    np.testing.assert_array_equal(jd.test[pa.n_test :], pb.test[:, [0, 1]])
    # per-fish z-scoring: each fish's training frames have mean 0 and s.d. 1 per unit
    for f in range(2):
        x = jd.train[jd.fish_train == f]
        np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
        np.testing.assert_allclose(x.std(0), 1, atol=1e-4)
    # the neuron -> common unit maps
    assert jd.unit_of_neuron_per_fish[0].tolist() == [-1] * 3 + [0] * 3 + [1] * 3
    assert jd.unit_of_neuron_per_fish[1].tolist() == [0] * 3 + [1] * 3 + [-1] * 3
    fd = jd.fish_dataset(1)
    np.testing.assert_array_equal(fd.test, pb.test[:, [0, 1]])
    d = jd.describe()
    assert d["n_fish"] == 2 and d["filled_units_per_fish"] == [0, 0]


def test_min_fish_fills_missing_voxels_with_the_fish_mean():
    a, b = _rec([0, 1, 2], seed=1, name="a"), _rec([1, 2, 3], seed=2, name="b")
    jd = joint_dataset([a, b], 10.0, min_fish=1, signal="dff")
    assert jd.voxel_keys[:, 0].tolist() == [0, 1, 2, 3]
    assert jd.present.tolist() == [[True, True, True, False], [False, True, True, True]]
    # filled entries are 0 = the fish's mean after z-scoring
    assert np.all(jd.train[jd.fish_train == 0][:, 3] == 0)
    assert np.all(jd.test[jd.fish_test == 1][:, 0] == 0)
    assert jd.describe()["filled_units_per_fish"] == [1, 1]


def test_bad_input():
    a, b = _rec([0, 1], name="a"), _rec([0, 1], name="b")
    with pytest.raises(InputError, match="reference-brain"):
        joint_dataset([a, _rec([0, 1], name="noref", ref=False)], 10.0, signal="dff")
    with pytest.raises(InputError, match="not on the same reference grid"):
        joint_dataset([a, _rec([0, 1], regions=("A", "C"))], 10.0, signal="dff")
    with pytest.raises(InputError, match="at least 2"):
        joint_dataset([a], 10.0, signal="dff")
    with pytest.raises(ConfigError, match="voxel_um"):
        joint_dataset([a, b], None, signal="dff")
    for k in (0, 3, 1.5, True):
        with pytest.raises(ConfigError, match="min_fish"):
            joint_dataset([a, b], 10.0, min_fish=k, signal="dff")
    with pytest.raises(InputError, match="no voxel"):
        joint_dataset([_rec([0]), _rec([5])], 10.0, signal="dff")
    # binarised data have no neutral fill value
    with pytest.raises(ConfigError, match="binarised"):
        joint_dataset(
            [_rec([0, 1]), _rec([1, 2])],
            10.0,
            min_fish=1,
            signal="dff",
            transform="binarize",
            threshold=3.0,
        )


def test_synthetic_cohort_truth():
    recs, truth = make_synthetic_cohort(
        n_fish=3, n_neurons=800, n_frames=100, n_shared=3, n_private=1, seed=4
    )
    assert len(recs) == 3 and truth.n_assemblies == 6
    assert truth.shared.tolist() == [True] * 3 + [False] * 3
    assert truth.expressed.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 1]]
    for f, r in enumerate(recs):
        # own positions per fish, members = neurons within the ball around the shared centre
        assert not np.allclose(recs[0].ref_coords[:50], r.ref_coords[:50]) or f == 0
        W = truth.weights[f]
        assert np.all((W != 0).any(1) == truth.expressed[f])
        for k in np.flatnonzero(truth.expressed[f]):
            d = np.linalg.norm(r.ref_coords[W[k] != 0] - truth.centres[k], axis=1)
            assert d.max() <= truth.radius_um + 5 * 3.0  # + registration jitter
        # members spike more when their assembly is on
        k = 0
        on = truth.activity[f][:, k] > 0
        members = W[k] != 0
        if on.any() and (~on).any():
            assert r.spikes[on][:, members].mean() > r.spikes[~on][:, members].mean() + 0.3
    # the same seed gives the same cohort
    recs2, truth2 = make_synthetic_cohort(
        n_fish=3, n_neurons=800, n_frames=100, n_shared=3, n_private=1, seed=4
    )
    np.testing.assert_array_equal(recs[2].spikes, recs2[2].spikes)


def test_truth_on_grid_sums_fish():
    recs, truth = make_synthetic_cohort(
        n_fish=2, n_neurons=600, n_frames=60, n_shared=2, n_private=1, seed=1
    )
    jd = joint_dataset(recs, 100.0, transform="zscore", min_fish=2)
    G = truth_on_grid(truth, jd)
    assert G.shape == (4, jd.n_units)
    # a private assembly is on the grid through its own fish only
    u0 = jd.unit_of_neuron_per_fish[0]
    ok = u0 >= 0
    expect = np.zeros(jd.n_units)
    np.add.at(expect, u0[ok], truth.weights[0][2, ok])
    np.testing.assert_allclose(G[2], expect, rtol=1e-6)


def test_write_and_load_cohort(tmp_path):
    from raysearch.data.recordings import load_recording

    out = tmp_path / "cohort"
    files = write_synthetic_cohort(
        out, n_fish=2, n_neurons=300, n_frames=40, n_shared=1, n_private=1, seed=2
    )
    recs, truth = make_synthetic_cohort(
        n_fish=2, n_neurons=300, n_frames=40, n_shared=1, n_private=1, seed=2
    )
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["shared"] == [True, False, False]
    loaded = load_cohort_truth(out)
    np.testing.assert_array_equal(loaded.weights[1], truth.weights[1])
    np.testing.assert_array_equal(loaded.expressed, truth.expressed)
    from raysearch.data.synthetic import load_ground_truth

    g = load_ground_truth(files[1])  # the single-fish reader reads a cohort fish
    np.testing.assert_array_equal(g.weights, truth.weights[1])
    np.testing.assert_array_equal(g.membership, truth.weights[1] != 0)
    r = load_recording(files[1])
    np.testing.assert_array_equal(r.spikes, recs[1].spikes)
    np.testing.assert_allclose(r.ref_coords, recs[1].ref_coords, atol=1e-3)
    with pytest.raises(InputError, match="already exists"):
        write_synthetic_cohort(out, n_fish=2, n_neurons=300, n_frames=40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no temporary left


def test_truth_on_grid_of_one_fish():
    recs, truth = make_synthetic_cohort(
        n_fish=2, n_neurons=600, n_frames=60, n_shared=2, n_private=1, seed=1
    )
    jd = joint_dataset(recs, 100.0, transform="zscore", min_fish=2)
    np.testing.assert_allclose(
        truth_on_grid(truth, jd, fish=0) + truth_on_grid(truth, jd, fish=1),
        truth_on_grid(truth, jd),
    )


def test_cli_synth_cohort(tmp_path, capsys):
    from raysearch.cli import main

    out = tmp_path / "c"
    assert (
        main(
            [
                "synth-cohort",
                str(out),
                "--fish",
                "2",
                "--neurons",
                "200",
                "--frames",
                "30",
                "--shared",
                "1",
                "--private",
                "1",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["cohort.json", "fish0.h5", "fish1.h5"]
    assert main(["synth-cohort", str(out), "--fish", "2"]) == 2  # exists: one error
    assert "already exists" in capsys.readouterr().err
    assert main(["synth-cohort", str(tmp_path / "d"), "--fish", "1"]) == 2
    assert not (tmp_path / "d").exists()
