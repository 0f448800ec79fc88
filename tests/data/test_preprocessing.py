"""Preprocessing: voxel averaging, transforms, the split (fixed and percentile), bad settings."""

import itertools
import logging

import numpy as np
import pytest

from raysearch.data.preprocessing import (
    percentile_split,
    preprocess,
    segment_bounds,
    split_scores,
    unit_regions,
    voxel_average,
    voxelize,
)
from raysearch.data.recordings import Recording
from raysearch.data.synthetic import make_synthetic_recording
from raysearch.errors import ConfigError, InputError


def _rec(spikes=None, dff=None, coords=None, ref=None, labels=None, names=None):
    X = spikes if spikes is not None else dff
    T, N = X.shape
    coords = np.zeros((N, 3), np.float32) if coords is None else np.asarray(coords, np.float32)
    labels = np.ones((N, 1), bool) if labels is None else np.asarray(labels, bool)
    names = names or [f"r{i}" for i in range(labels.shape[1])]
    return Recording(
        spikes=spikes,
        dff=dff,
        coords=coords,
        ref_coords=None if ref is None else np.asarray(ref, np.float32),
        times=np.arange(T) / 4.0,
        labels=labels,
        region_names=names,
        source="hand.h5",
        layout="crbm",
    )


# ---------------------------------------------------------------------------------------------
# voxels


def test_voxel_averaging_against_a_hand_built_case():
    # 6 neurons, 10 um voxels anchored at the reference origin:
    # n0 (1,1,1) and n1 (9,9,9)        -> voxel (0,0,0), centre (5,5,5)
    # n2 (15,1,1)                       -> voxel (1,0,0), centre (15,5,5)
    # n3 (-1,1,1)                       -> voxel (-1,0,0), centre (-5,5,5)
    # n4 (12,3,4), n5 (19.9,0,0)        -> voxel (1,0,0) as well
    ref = [[1, 1, 1], [9, 9, 9], [15, 1, 1], [-1, 1, 1], [12, 3, 4], [19.9, 0, 0]]
    # microscope coordinates are deliberately different: the grid must use ref coords
    micro = np.array(ref) * 3.0 + 100.0
    labels = np.array([[1, 0], [0, 1], [0, 1], [1, 0], [0, 1], [1, 0]], bool)
    X = np.array(
        [[1, 0, 1, 1, 0, 0], [0, 0, 1, 0, 1, 1], [1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=bool
    )
    X = np.repeat(X, 3, axis=0)  # 12 frames (>= 10 segments)
    rec = _rec(spikes=X, coords=micro, ref=ref, labels=labels)
    ds = preprocess(
        rec, voxel_um=10.0, transform="none", visible="gaussian", test_segments=(0, 1, 2)
    )
    # units in voxel-index order: (-1,0,0), (0,0,0), (1,0,0)
    np.testing.assert_allclose(ds.coords, [[-5, 5, 5], [5, 5, 5], [15, 5, 5]])
    assert ds.n_neurons.tolist() == [1, 2, 3]
    # majority region: voxel (1,0,0) holds n2 (r1), n4 (r1), n5 (r0) -> r1
    assert ds.unit_region.tolist() == [0, 0, 1]  # (0,0,0): one each -> tie -> lower index r0
    assert ds.unit_of_neuron.tolist() == [1, 1, 2, 0, 2, 2]
    expected = np.stack([X[:, 3], X[:, [0, 1]].mean(1), X[:, [2, 4, 5]].mean(1)], 1)
    bounds = segment_bounds(12, 10)
    train_rows = np.concatenate([np.arange(bounds[s], bounds[s + 1]) for s in range(3, 10)])
    np.testing.assert_allclose(ds.train, expected[train_rows], atol=1e-6)
    # minimum count: only the 3-neuron voxel survives min 3
    ds3 = preprocess(
        rec, voxel_um=10.0, min_neurons_per_voxel=3, transform="none", visible="gaussian"
    )
    assert ds3.n_units == 1 and ds3.unit_of_neuron.tolist() == [-1, -1, 0, -1, 0, 0]
    # binarised voxel means (auto for voxel-averaged spikes): mean > 0.5
    dsb = preprocess(rec, voxel_um=10.0, test_segments=(0, 1, 2))
    assert dsb.visible == "bernoulli" and dsb.transform == "binarize"
    np.testing.assert_array_equal(dsb.train, (expected[train_rows] > 0.5).astype(np.float32))


def test_grid_is_anchored_so_the_same_voxel_is_the_same_place():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, (200, 3))
    b = np.concatenate([a[:50], rng.uniform(0, 100, (100, 3))])  # another "fish"
    ua, ca, _, _ = voxelize(a, 20.0)
    ub, cb, _, _ = voxelize(b, 20.0)
    # the first 50 neurons sit at the same places in both fish: same voxel centres
    np.testing.assert_array_equal(ca[ua[:50]], cb[ub[:50]])
    # centres lie on the fixed grid (odd multiples of half a voxel)
    assert np.allclose(((ca / 10.0) - 1) % 2, 0)


def test_voxel_average_blocks_match_dense_mean(monkeypatch):
    import raysearch.data.preprocessing as P

    monkeypatch.setattr(P, "_BLOCK_BYTES", 64)  # many blocks
    rng = np.random.default_rng(1)
    X = rng.random((37, 9)).astype(np.float32)
    unit = np.array([0, 2, 1, 0, -1, 2, 2, 1, 0])
    out = voxel_average(X, unit, 3)
    for u in range(3):
        np.testing.assert_allclose(out[:, u], X[:, unit == u].mean(1), rtol=1e-5)


def test_nothing_left_after_voxel_averaging():
    rec = _rec(spikes=np.zeros((20, 3), bool), ref=[[0, 0, 0], [50, 0, 0], [100, 0, 0]])
    with pytest.raises(InputError, match=r"hand\.h5: no voxel of 10.0 um .*nothing left"):
        preprocess(rec, voxel_um=10.0, min_neurons_per_voxel=2)


def test_unit_regions_first_mask_or_none():
    lab = np.array([[0, 1, 1], [0, 0, 0], [1, 0, 0]], bool)
    assert unit_regions(lab).tolist() == [1, -1, 0]


# ---------------------------------------------------------------------------------------------
# transforms


def test_zscore_uses_training_frames_only():
    rng = np.random.default_rng(2)
    dff = rng.normal(3.0, 2.0, (100, 5)).astype(np.float32)
    dff[:, 4] += np.linspace(0, 10, 100).astype(np.float32)  # a drift: test frames differ
    ds = preprocess(_rec(dff=dff), signal="dff", test_segments=(7, 8, 9))
    assert ds.visible == "gaussian" and ds.transform == "zscore"
    train, test = dff[:70].astype(np.float64), dff[70:].astype(np.float64)
    mu, sd = train.mean(0), train.std(0)
    np.testing.assert_allclose(ds.train, (train - mu) / sd, atol=1e-4)
    np.testing.assert_allclose(ds.test, (test - mu) / sd, atol=1e-4)
    assert ds.test[:, 4].mean() > 1.0  # the drifted unit is not re-centred on the test frames


def test_constant_units_dropped_with_warning_or_error(caplog):
    dff = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
    dff[:, 1] = 2.5
    rec = _rec(dff=dff, labels=np.eye(4, dtype=bool))
    with caplog.at_level(logging.WARNING):
        ds = preprocess(rec, signal="dff")
    assert ds.n_units == 3 and "constant" in caplog.text
    assert ds.unit_region.tolist() == [0, 2, 3]
    assert ds.unit_of_neuron.tolist() == [0, -1, 1, 2]
    with pytest.raises(InputError, match=r"hand\.h5: 1 units are constant.*on_constant='drop'"):
        preprocess(rec, signal="dff", on_constant="error")


def test_binarize_threshold_and_visible_checks():
    dff = np.tile(np.array([[0.1, 0.6, 0.5, 2.0]], np.float32), (20, 1))
    rec = _rec(dff=dff)
    ds = preprocess(rec, signal="dff", transform="binarize", threshold=0.5)
    assert ds.visible == "bernoulli"
    np.testing.assert_array_equal(ds.train[0], [0, 1, 0, 1])
    with pytest.raises(ConfigError, match="bernoulli visible units cannot take"):
        preprocess(rec, signal="dff", transform="zscore", visible="bernoulli")
    with pytest.raises(ConfigError, match="not binary"):
        preprocess(rec, signal="dff", transform="none", visible="bernoulli")
    with pytest.raises(ConfigError, match="transform"):
        preprocess(rec, signal="dff", transform="log")
    with pytest.raises(InputError, match="no spikes"):
        preprocess(rec, signal="spikes")


def test_spikes_default_is_bernoulli_on_single_neurons():
    rec, _ = make_synthetic_recording(300, 1500, seed=0)
    ds = preprocess(rec)
    assert ds.visible == "bernoulli" and ds.transform == "none" and ds.voxel_um is None
    assert ds.train.dtype == np.float32 and set(np.unique(ds.train)) <= {0.0, 1.0}
    assert ds.n_train == 1050 and ds.n_test == 450 and ds.test_segments == (2, 6, 7)
    assert ds.n_neurons.tolist() == [1] * 300
    b = segment_bounds(1500, 10)
    np.testing.assert_array_equal(ds.test, rec.spikes[np.r_[b[2] : b[3], b[6] : b[8]]])
    d = ds.describe()
    assert d["n_units"] == 300 and d["test_segments"] == [2, 6, 7]


# ---------------------------------------------------------------------------------------------
# split


def test_segment_bounds_and_too_few_frames():
    assert segment_bounds(23, 10).tolist() == [0, 3, 6, 9, 11, 13, 15, 17, 19, 21, 23]
    rec = _rec(spikes=np.zeros((9, 4), bool))
    with pytest.raises(InputError, match=r"hand\.h5: 9 frames are fewer than the 10 segments"):
        preprocess(rec)
    with pytest.raises(ConfigError, match="test_segments"):
        preprocess(_rec(spikes=np.zeros((30, 4), bool)), test_segments=(2, 2, 11))


def test_percentile_split_on_a_crafted_recording():
    # Segments 0-6 are copies of pattern P, segments 7-9 copies of pattern Q (another rate).
    # Train and test statistics then depend only on j = how many Q segments are held out:
    # the Q share is j/3 in test and (3-j)/7 in train, closest for j = 1 (63 of the 120
    # choices, all with the same score), so the 10th-percentile position (12 of 0..119) is the
    # 13th j = 1 choice in itertools.combinations order: (0, 5, 7).
    rng = np.random.default_rng(5)
    P = rng.random((20, 30)) < 0.05
    Q = rng.random((20, 30)) < 0.3
    X = np.concatenate([P] * 7 + [Q] * 3).astype(np.float32)
    choices, rm, rc, score = split_scores(X)
    assert len(choices) == 120
    j = np.array([sum(s >= 7 for s in c) for c in choices])
    for stat in (rm, rc, score):
        assert stat[j == 1].max() < stat[j != 1].min()
        assert np.ptp(stat[j == 1]) == 0
    assert percentile_split(X) == ((0, 5, 7), score[choices.index((0, 5, 7))])
    rec = _rec(spikes=X.astype(bool))
    ds = preprocess(rec, test_segments="percentile")
    assert ds.test_segments == (0, 5, 7) and ds.split_rule == "percentile"
    assert preprocess(rec, test_segments="percentile").test_segments == (0, 5, 7)


def test_split_scores_match_direct_computation():
    rng = np.random.default_rng(6)
    X = (rng.random((53, 7)) < np.linspace(0.05, 0.4, 53)[:, None]).astype(np.float32)
    choices, rm, rc, score = split_scores(X, n_segments=6, n_test_segments=2)
    b = segment_bounds(53, 6)
    iu = np.triu_indices(7, 1)
    for c, test in enumerate(choices):
        te = np.concatenate([X[b[s] : b[s + 1]] for s in test]).astype(np.float64)
        tr = np.concatenate([X[b[s] : b[s + 1]] for s in range(6) if s not in test]).astype(float)
        assert rm[c] == pytest.approx(np.sqrt(np.mean((te.mean(0) - tr.mean(0)) ** 2)))
        cte = np.cov(te, rowvar=False, bias=True)[iu]
        ctr = np.cov(tr, rowvar=False, bias=True)[iu]
        assert rc[c] == pytest.approx(np.sqrt(np.mean((cte - ctr) ** 2)))
    np.testing.assert_allclose(score, rm / np.median(rm) + rc / np.median(rc))
    assert len(choices) == len(list(itertools.combinations(range(6), 2)))
    # reproducible, and the unit subset for the covariance term follows the seed
    assert percentile_split(X, 6, 2) == percentile_split(X, 6, 2)
    assert (
        split_scores(X, 6, 2, max_units=3, seed=1)[2].tolist()
        == split_scores(X, 6, 2, max_units=3, seed=1)[2].tolist()
    )
