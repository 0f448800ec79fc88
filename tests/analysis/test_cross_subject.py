"""Cross-subject analysis: known answers on constructed weights/data, and the acceptance run on a
small synthetic cohort (3 fish x 1500 neurons x 2000 frames; one joint and three per-fish cRBMs,
about a minute on one core)."""

import numpy as np
import pytest

from raysearch.analysis.cross_subject import (
    coupling_consistency,
    expressing_fish,
    expression_figure,
    fish_expression,
    match_units,
    recurrence,
    recurrence_figure,
    report_section,
    shared_recovery,
)
from raysearch.data.cohort import JointDataset
from raysearch.errors import InputError


def _orthonormal(M, U, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(U, M)))
    return q.T


def test_match_units_recovers_a_permutation():
    A = _orthonormal(6, 40, 0) * np.arange(1, 7)[:, None]
    perm = np.array([3, 0, 5, 1, 4, 2])
    B = -2.0 * A[perm] + 1e-3 * np.random.default_rng(1).normal(size=A.shape)
    m = match_units(A, B)
    # unit a of A is row b of B where perm[b] == a
    assert m["unit_b"].tolist() == np.argsort(perm).tolist()
    assert np.all(m["abs_cosine"] > 0.999)
    with pytest.raises(InputError, match="common grid"):
        match_units(A, B[:, :10])


def test_recurrence_share():
    base = _orthonormal(8, 60, 2)
    a = base[:5]  # units 0..4
    b = np.vstack([base[[2, 0, 1]], base[5:7]])  # shares units 0, 1, 2 of a
    share, pairs = recurrence([a, b], names=["x", "y"], min_cosine=0.5)
    assert share.loc["x", "y"] == pytest.approx(3 / 5)
    assert share.loc["y", "x"] == pytest.approx(3 / 5)
    assert share.loc["x", "x"] == 1.0
    assert pairs["recurs"].sum() == 6
    # empty units are not counted
    a0 = np.vstack([a, np.zeros((2, 60))])
    share, _ = recurrence([a0, b], min_cosine=0.5)
    assert share.iloc[0, 1] == pytest.approx(3 / 5)


def _joint(T=4000, seed=0):
    """Fish 0: voxels 0..4 share a common signal (variance 2); fish 1: all independent."""
    rng = np.random.default_rng(seed)
    U = 8
    X0 = rng.normal(size=(T, U))
    X0[:, :5] += np.sqrt(2.0) * rng.normal(size=(T, 1))
    X1 = rng.normal(size=(T, U))
    X = np.vstack([X0, X1]).astype(np.float32)
    fish = np.repeat([0, 1], T)
    half = np.arange(2 * T) % 4 == 0
    return JointDataset(
        train=X[~half],
        test=X[half],
        visible="gaussian",
        coords=np.zeros((U, 3), np.float32),
        unit_region=np.zeros(U, int),
        region_names=["r"],
        n_neurons=np.ones(U, int),
        test_segments=(0,),
        n_segments=2,
        source="t",
        signal="dff",
        voxel_um=10.0,
        fish_train=fish[~half],
        fish_test=fish[half],
        fish_names=["f0", "f1"],
        present=np.ones((2, U), bool),
        unit_of_neuron_per_fish=[np.arange(U)] * 2,
    )


def test_fish_expression_known_answer():
    jd = _joint()
    W = np.zeros((3, 8))
    W[0, :5] = 1.0  # the fish-0 assembly: e = (n - 1) * var(common) = 4 * 2 = 8
    W[1, 5:] = 1.0  # independent voxels: e = 0
    e = fish_expression(W, jd)
    assert list(e.columns) == ["f0", "f1"]
    assert e.loc[0, "f0"] == pytest.approx(8.0, rel=0.1)
    assert e.loc[0, "f1"] < 0.3
    assert e.loc[1].max() < 0.3
    assert e.loc[2].tolist() == [0.0, 0.0]
    rel = expressing_fish(e, threshold=0.3)
    assert rel.loc[0, "n_fish"] == 1 and not rel.loc[0, "shared"]
    assert rel.loc[2, "n_fish"] == 0
    assert rel.loc[0, "rel_f0"] == 1.0


def test_coupling_consistency_identical_and_scaled():
    class M:
        def __init__(self, W):
            self.weights_ = W
            self.hidden_var_ = np.ones(W.shape[0])

    W = np.abs(np.random.default_rng(3).normal(size=(4, 30)))
    region = np.arange(30) % 5
    mats, cons = coupling_consistency([M(W), M(3 * W)], region, 5)
    assert cons.iloc[0, 1] == pytest.approx(1.0)
    np.testing.assert_allclose(mats[1], 9 * mats[0], rtol=1e-5)


def test_figures_and_section(tmp_path):
    jd = _joint(T=400)
    W = np.eye(3, 8)
    rel = expressing_fish(fish_expression(W, jd))
    share, _ = recurrence([_orthonormal(3, 8, 0)] * 2)
    assert expression_figure(rel).axes and recurrence_figure(share).axes
    png = tmp_path / "x.png"
    expression_figure(rel).savefig(png)
    html = report_section({"expression": rel, "recurrence": share}, {"x": png})
    assert "Cross-subject" in html and "src='data:image/png;base64," in html


# ------------------------------------------------------------------------------------------
# acceptance on a small synthetic cohort


@pytest.fixture(scope="module")
def cohort():
    from raysearch.analysis.cross_subject import truth_on_grid
    from raysearch.crbm import CRBM
    from raysearch.data.cohort import joint_dataset, make_synthetic_cohort

    recs, truth = make_synthetic_cohort(
        n_fish=3, n_neurons=1500, n_frames=2000, n_shared=4, n_private=1, seed=0
    )
    jd = joint_dataset(recs, 50.0, transform="zscore")
    G = truth_on_grid(truth, jd)
    kw = dict(
        visible="gaussian",
        lam=0.003,
        n_gibbs=1,
        batch_size=100,
        learning_rate=5e-3,
        seed=0,
        backend="numpy",
    )
    # These tests check the cross-subject analysis of the weights, not the verdict. At this lambda
    # the joint model is not normalisable (raysearch.stability says so after 100 updates, and an
    # independent 6,000-step Gibbs run explodes to |v| ~ 1e29), so the trainer's early stop is
    # switched off here to let the fit reach the weights the analysis is tested on. A search would
    # flag this model bad (unstable); the assertion below keeps that finding visible.
    from raysearch.crbm import estimator
    from raysearch.stability import check_stability

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(estimator, "_unstable_reason", lambda params, bk: "")
        joint = CRBM(n_hidden=12, n_updates=600, **kw).fit(jd)
        per_fish = [
            CRBM(n_hidden=10, n_updates=600, **kw).fit(jd.fish_dataset(f)) for f in range(jd.n_fish)
        ]
    assert (
        check_stability(joint.weights_, joint.gamma_, joint.gamma_plus_, joint.gamma_minus_).verdict
        == "unstable"
    )
    return truth, jd, G, joint, per_fish


def test_joint_model_recovers_shared_assemblies(cohort):
    truth, jd, G, joint, _ = cohort
    rec = shared_recovery(joint, G, truth.shared)
    assert rec.loc[rec["shared"], "abs_cosine"].mean() >= 0.8, rec


def test_shared_told_apart_from_private(cohort):
    truth, jd, G, joint, _ = cohort
    rec = shared_recovery(joint, G, truth.shared)
    rel = expressing_fish(fish_expression(joint, jd))
    cols = [f"rel_{n}" for n in jd.fish_names]
    for k in range(truth.n_assemblies):
        if rec.loc[k, "abs_cosine"] < 0.8:
            assert not truth.shared[k]  # only private ones may be missed
            continue
        mu = rec.loc[k, "best_unit"]
        expressed = rel.loc[mu, cols].to_numpy() >= 0.3
        assert expressed.tolist() == truth.expressed[:, k].tolist(), (k, rel.loc[mu])


def test_per_fish_matching_finds_shared_assemblies(cohort):
    from raysearch.analysis.cross_subject import truth_on_grid

    truth, jd, G, _, per_fish = cohort

    # each fish's model against that fish's planted assemblies on the grid
    recs = [
        shared_recovery(m, truth_on_grid(truth, jd, fish=f), truth.shared)
        for f, m in enumerate(per_fish)
    ]
    best = np.array([r["best_unit"].to_numpy() for r in recs])  # (F, K)
    cos = np.array([r["abs_cosine"].to_numpy() for r in recs])
    shared = np.flatnonzero(truth.shared)
    # single-fish models see a third of the frames: every shared assembly is found in every fish
    # (best |cos| >= 0.7; the 0.8 holds on average), and the matching links them
    assert cos[:, shared].min() >= 0.7, cos
    assert cos[:, shared].mean() >= 0.8, cos
    share, pairs = recurrence(per_fish, names=jd.fish_names)
    # |cos| of every unit of fish b's model with fish b's planted assemblies, (F, M, K)
    unit_cos = []
    for f, m in enumerate(per_fish):
        G = truth_on_grid(truth, jd, fish=f)
        G = G / np.linalg.norm(G, axis=1, keepdims=True).clip(1e-12)
        W = m.weights_ / np.linalg.norm(m.weights_, axis=1, keepdims=True).clip(1e-12)
        unit_cos.append(np.abs(W @ G.T))
    linked = []
    for a in range(3):
        for b in range(3):
            if a == b:
                continue
            p = pairs[(pairs.fish_a == jd.fish_names[a]) & (pairs.fish_b == jd.fish_names[b])]
            p = p.set_index("unit_a")
            for k in shared:
                # fish a's unit for assembly k is matched one to one to a unit of fish b that is
                # assembly k there too, and the pair recurs
                partner = p.loc[best[a, k], "unit_b"]
                linked.append(bool(unit_cos[b][partner, k] >= 0.5 and p.loc[best[a, k], "recurs"]))
    # the one-to-one matching links most, not all: a fish model may split an assembly over two
    # units, and the Hungarian pairing then takes the other one (20 of 24 on the full cohort of
    # bench/cross_subject_acceptance.py)
    assert np.mean(linked) >= 0.75, linked
    # at least the shared assemblies recur: 4 of 10 units per fish
    assert (share.to_numpy()[~np.eye(3, dtype=bool)] >= 4 / 10).all()
    mats, cons = coupling_consistency(per_fish, jd.unit_region, len(jd.region_names), jd.fish_names)
    assert cons.shape == (3, 3) and np.isfinite(cons.to_numpy()).all()


def test_analysis_and_report_files(tmp_path):
    from raysearch.analysis.cross_subject import cross_subject_analysis, write_cross_subject_report

    class M:
        def __init__(self, W):
            self.weights_ = W
            self.hidden_var_ = np.ones(W.shape[0])

    jd = _joint(T=400)
    W = np.zeros((2, 8))
    W[0, :5] = 1.0
    W[1, 5:] = 1.0
    res = cross_subject_analysis(jd, M(W), [M(W), M(W[::-1])])
    assert res["expression"].loc[0, "n_fish"] == 1 and res["expression"].loc[0, "rel_f0"] == 1.0
    assert res["recurrence"].iloc[0, 1] == 1.0  # the same units, permuted
    with pytest.raises(InputError, match="per-fish models"):
        cross_subject_analysis(jd, None, [M(W)])
    out = write_cross_subject_report(res, tmp_path / "r")
    assert out["html"].exists() and all(p.exists() for p in out["figures"].values())
    assert (tmp_path / "r" / "tables" / "cross_subject_expression.csv").exists()
