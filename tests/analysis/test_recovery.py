"""Assembly recovery against known answers: constructed angles, sign flips, voxel sums, and the
per-trial table of an experiment directory whose study names a synthetic fish."""

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysearch.analysis.recovery import assembly_recovery, recovery_table, truth_in_units
from raysearch.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))


def orthonormal(rng, n, k):
    Q, _ = np.linalg.qr(rng.normal(size=(n, k)))
    return Q.T  # (k, n) orthonormal rows


def test_known_angles_and_sign():
    rng = np.random.default_rng(0)
    G = orthonormal(rng, 50, 4)  # planted directions g_0..g_2, spare e
    planted, e = 3.0 * G[:3], G[3]
    angles = np.array([0.0, np.pi / 3, np.pi / 4])
    W = np.stack([np.cos(a) * G[k] + np.sin(a) * e for k, a in enumerate(angles)])
    W[1] *= -7.0  # sign and scale do not matter
    W = np.vstack([W, np.zeros(50)])  # a dead unit has cosine 0
    rc = assembly_recovery(W, planted)
    np.testing.assert_allclose(rc.per_assembly, np.cos(angles), atol=1e-12)
    assert rc.best_unit.tolist() == [0, 1, 2]
    assert rc.mean == pytest.approx(np.cos(angles).mean())
    assert rc.to_frame()["abs_cosine"].tolist() == pytest.approx(np.cos(angles).tolist())


def test_best_unit_is_the_maximum_over_units():
    rng = np.random.default_rng(1)
    G = orthonormal(rng, 40, 2)
    W = np.stack([0.2 * G[0] + rng.normal(size=40), G[0] + 0.1 * G[1], G[1]])
    rc = assembly_recovery(W, G)
    expect = np.abs(
        (G / np.linalg.norm(G, axis=1, keepdims=True))
        @ (W / np.linalg.norm(W, axis=1, keepdims=True)).T
    ).max(axis=1)
    np.testing.assert_allclose(rc.per_assembly, expect, atol=1e-12)
    assert rc.best_unit.tolist() == [1, 2]


def test_all_zero_model_recovers_nothing_and_a_fitted_object_is_accepted():
    rng = np.random.default_rng(2)
    G = rng.normal(size=(3, 20))

    class Fitted:
        weights_ = np.zeros((5, 20), np.float32)

    rc = assembly_recovery(Fitted(), G)
    assert rc.mean == 0.0 and np.all(rc.per_assembly == 0.0)


def test_units_sum_their_neurons():
    G = np.array([[1.0, 2.0, 0.0, 0.0, 5.0], [0.0, 0.0, 3.0, 4.0, 0.0]])
    unit_of_neuron = np.array([0, 0, 1, -1, 2])  # neuron 3 left out
    U = truth_in_units(G, unit_of_neuron)
    np.testing.assert_array_equal(U, [[3.0, 0.0, 5.0], [0.0, 3.0, 0.0]])
    W = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    rc = assembly_recovery(W, G, unit_of_neuron=unit_of_neuron)
    np.testing.assert_allclose(rc.per_assembly, [3 / np.sqrt(34), 1.0])


def test_bad_input_is_one_clear_error():
    G = np.ones((2, 10))
    with pytest.raises(InputError, match="unit_of_neuron"):
        assembly_recovery(np.ones((3, 8)), G)
    with pytest.raises(InputError, match="NaN"):
        assembly_recovery(np.full((3, 10), np.nan), G)
    with pytest.raises(InputError, match="2-D"):
        assembly_recovery(np.ones(10), G)
    with pytest.raises(InputError, match="entries"):
        truth_in_units(G, np.zeros(4, int))


def test_synthetic_fish_ground_truth_against_itself():
    """The planted weights of the synthetic fish recover themselves exactly; a random model does
    not (its best cosines are those of random directions, ~ sqrt(2 log M / N))."""
    from raysearch.data.synthetic import make_synthetic_recording

    _, truth = make_synthetic_recording(n_neurons=300, n_frames=200, seed=0)
    assert assembly_recovery(truth.weights, truth).mean == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert assembly_recovery(rng.normal(size=(8, 300)), truth).mean < 0.35


def test_recovery_table_of_an_experiment_directory(tmp_path):
    """Per-trial table for a study whose recording is a synthetic fish: the model holding the
    planted weights scores 1, a random one low; a recording without ground truth is refused."""
    from analysis_helpers import make_experiment

    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    spec = {"n_neurons": 120, "n_frames": 400, "seed": 3}
    rec, truth = make_synthetic_recording(**spec)
    ds = preprocess(rec)
    assert ds.n_units == 120
    rng = np.random.default_rng(0)
    K = truth.n_assemblies
    models = [
        dict(
            W=np.vstack([truth.weights, np.zeros((2, 120))]),
            c=np.ones(K + 2),
            lam=1e-3,
            seed=0,
            mean_nrmse=0.1,
        ),
        dict(W=rng.normal(size=(K + 2, 120)), c=np.ones(K + 2), lam=1e-5, seed=0, mean_nrmse=0.05),
    ]
    exp = make_experiment(tmp_path / "study", models, ds, recording="fish")
    study = {
        "name": "study",
        "recordings": [{"name": "fish", "synthetic": spec}],
        "search": {"mode": "grid", "lam": [1e-5, 1e-3]},
    }
    (exp / "study.yaml").write_text(yaml.safe_dump(study))
    table = recovery_table(exp).sort_values("lam")
    assert table["lam"].tolist() == [1e-5, 1e-3]
    assert table["recovery"].iloc[1] == pytest.approx(1.0, abs=1e-6)
    assert table["recovery"].iloc[0] < 0.5
    assert (table["n_assemblies"] == K).all()

    study["recordings"] = [{"name": "fish", "path": str(tmp_path / "missing.h5")}]
    (exp / "study.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(InputError, match="ground truth"):
        recovery_table(exp)


def test_recovery_table_with_voxels_rebuilds_the_unit_map(tmp_path):
    """With voxels the model has fewer units than the fish has neurons: the table preprocesses the
    recording as the study did and sums the planted weights into the voxels."""
    from analysis_helpers import make_experiment

    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    spec = {"n_neurons": 150, "n_frames": 400, "seed": 1}
    rec, truth = make_synthetic_recording(**spec)
    ds = preprocess(rec, voxel_um=40.0)
    assert ds.n_units < 150
    planted = truth_in_units(truth.weights, ds.unit_of_neuron, ds.n_units)
    K = truth.n_assemblies
    models = [dict(W=planted, c=np.ones(K), lam=1e-3, seed=0, mean_nrmse=0.1)]
    exp = make_experiment(tmp_path / "study", models, ds, recording="fish")
    study = {
        "name": "study",
        "recordings": [{"name": "fish", "synthetic": spec}],
        "preprocessing": {"voxel_um": 40.0},
        "search": {"mode": "grid", "lam": [1e-3]},
    }
    (exp / "study.yaml").write_text(yaml.safe_dump(study))
    table = recovery_table(exp)
    assert table["recovery"].tolist() == pytest.approx([1.0], abs=1e-6)


def test_unit_truth_on_zscored_voxels_is_the_voxel_mean_over_its_sd():
    """Known answer: two voxels of 2 and 1 neurons, z-scored with s.d.s 2 and 0.5."""
    from types import SimpleNamespace

    from raysearch.analysis.recovery import unit_truth

    G = np.array([[1.0, 3.0, 4.0, 9.0]])  # neuron 3 left out (-1)
    u = np.array([0, 0, 1, -1])
    zs = SimpleNamespace(n_units=2, unit_of_neuron=u, zscore_std=np.array([2.0, 0.5]))
    assert unit_truth(G, zs) == pytest.approx(np.array([[2.0 / 2.0, 4.0 / 0.5]]))
    binar = SimpleNamespace(n_units=2, unit_of_neuron=u, zscore_std=None)
    assert unit_truth(G, binar) == pytest.approx(np.array([[4.0, 4.0]]))  # sums, as before
    # a model whose weights are exactly the mapped truth recovers it; the plain sum does not
    W = np.array([[1.0, 8.0]])
    assert assembly_recovery(W, G, dataset=zs).mean == pytest.approx(1.0)
    assert assembly_recovery(W, G, unit_of_neuron=u).mean < 0.9


def test_recovery_table_on_zscored_voxels_uses_the_voxel_means(tmp_path):
    """A dF/F study on voxels: the table z-scores as the study did and maps the truth with
    unit_truth, so a model holding exactly those vectors scores 1."""
    from analysis_helpers import make_experiment

    from raysearch.analysis.recovery import unit_truth
    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    spec = {"n_neurons": 150, "n_frames": 400, "seed": 1}
    rec, truth = make_synthetic_recording(**spec)
    ds = preprocess(rec, signal="dff", voxel_um=40.0)
    assert ds.zscore_std is not None and ds.n_units < 150
    planted = unit_truth(truth.weights, ds)
    K = truth.n_assemblies
    models = [dict(W=planted, c=np.ones(K), lam=1e-3, seed=0, mean_nrmse=0.1)]
    exp = make_experiment(tmp_path / "study", models, ds, recording="fish")
    study = {
        "name": "study",
        "recordings": [{"name": "fish", "synthetic": spec}],
        "preprocessing": {"voxel_um": 40.0, "signal": "dff"},
        "search": {"mode": "grid", "lam": [1e-3]},
    }
    (exp / "study.yaml").write_text(yaml.safe_dump(study))
    table = recovery_table(exp)
    assert table["recovery"].tolist() == pytest.approx([1.0], abs=1e-6)
