"""Model files and checkpoints: round trip, documented layout, clear errors, atomic writes."""

import json
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

import raysearch
from raysearch.crbm import CRBM
from raysearch.crbm.io import load_units, read_checkpoint
from raysearch.errors import InputError

SETTINGS = (
    "n_hidden",
    "visible",
    "penalty",
    "lam",
    "n_updates",
    "batch_size",
    "n_chains",
    "n_gibbs",
    "learning_rate",
    "lr_final_ratio",
    "decay_after",
    "beta2",
    "epsilon",
    "seed",
    "backend",
)


@pytest.fixture(scope="module")
def fitted():
    X = (np.random.default_rng(0).random((120, 15)) < 0.2).astype(np.float32)
    return CRBM(
        n_hidden=3, lam=0.02, n_updates=20, batch_size=20, n_gibbs=2, seed=5, backend="numpy"
    ).fit(X), X


def test_round_trip(tmp_path, fitted):
    m, X = fitted
    path = m.save(tmp_path / "m.h5")
    assert not [p for p in tmp_path.iterdir() if p.name != "m.h5"]  # no temp file left
    m2 = CRBM.load(path)
    assert raysearch.CRBM is CRBM
    for k in (
        "weights_",
        "fields_",
        "gamma_plus_",
        "gamma_minus_",
        "theta_plus_",
        "theta_minus_",
        "hidden_var_",
    ):
        np.testing.assert_array_equal(getattr(m2, k), getattr(m, k))
    assert m2.get_params() == m.get_params()
    assert (m2.n_updates_done_, m2.diverged_) == (20, False)
    np.testing.assert_array_equal(m2.transform(X), m.transform(X))


def test_file_layout(tmp_path, fitted):
    m, _ = fitted
    ds = SimpleNamespace(
        coords=np.arange(45, dtype=np.float32).reshape(15, 3),
        unit_region=np.arange(15) % 4 - 1,
        n_neurons=np.ones(15, int),
        region_names=["A_L", "A_R", "B_L"],
        source="synthetic(seed=0)",
        signal="spikes",
        voxel_um=None,
    )
    path = m.save(tmp_path / "m.h5", dataset=ds)
    with h5py.File(path, "r") as f:
        assert f["weights"].shape == (3, 15) and f["weights"].dtype == np.float32
        assert f["fields"].shape == (15,)
        for k in ("gamma_plus", "gamma_minus", "theta_plus", "theta_minus", "hidden_var"):
            assert f[k].shape == (3,)
        assert "visible_gamma" not in f
        for k in SETTINGS:
            assert k in f.attrs, k
        assert f.attrs["lam"] == 0.02 and f.attrs["seed"] == 5 and f.attrs["n_chains"] == "none"
        assert f.attrs["n_updates_done"] == 20 and not f.attrs["diverged"]
        assert f.attrs["raysearch_version"] == raysearch.__version__
        assert json.loads(f.attrs["settings_json"])["penalty"] == "l2l1"
        assert f["units/coords"].shape == (15, 3)
        assert json.loads(f["units"].attrs["region_names"]) == ["A_L", "A_R", "B_L"]
    u = load_units(path)
    np.testing.assert_array_equal(u["unit_region"], ds.unit_region)
    assert load_units(m.save(tmp_path / "plain.h5")) is None


def test_gaussian_model_round_trip(tmp_path):
    X = np.random.default_rng(1).standard_normal((80, 6)).astype(np.float32)
    m = CRBM(
        n_hidden=2, visible="gaussian", n_updates=10, batch_size=20, n_gibbs=1, backend="numpy"
    ).fit(X)
    m2 = CRBM.load(m.save(tmp_path / "g.h5"))
    np.testing.assert_array_equal(m2.gamma_, m.gamma_)
    np.testing.assert_allclose(m2.free_energy(X[:4]), m.free_energy(X[:4]))


def test_load_rejects_non_model_files(tmp_path, fitted):
    m, _ = fitted
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        CRBM.load(txt)
    with pytest.raises(InputError, match="no such file"):
        CRBM.load(tmp_path / "missing.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["Data/Brain/Analysis/ThresholdedSpikes"] = np.zeros((3, 3))
    with pytest.raises(InputError, match="not a raysearch"):
        CRBM.load(other)
    ck = m.save_checkpoint(tmp_path / "ck.h5")
    with pytest.raises(InputError, match="not a raysearch model file"):
        CRBM.load(ck)
    with pytest.raises(InputError, match="checkpoint"):
        read_checkpoint(m.save(tmp_path / "m.h5"))
    broken = m.save(tmp_path / "broken.h5")
    with h5py.File(broken, "a") as f:
        del f["theta_minus"]
    with pytest.raises(InputError, match="theta_minus"):
        CRBM.load(broken)


def test_failed_write_leaves_old_file_intact(tmp_path, fitted):
    m, _ = fitted
    path = m.save(tmp_path / "m.h5")
    before = path.read_bytes()
    bad_ds = SimpleNamespace(
        coords=np.zeros((7, 3)),
        unit_region=np.zeros(7),
        n_neurons=np.ones(7),
        region_names=[],
        source="",
        signal="",
        voxel_um=None,
    )
    with pytest.raises(InputError, match="7 units"):
        m.save(path, dataset=bad_ds)
    # a failure in the middle of writing (unserialisable region names) leaves no partial file
    mid = SimpleNamespace(
        coords=np.zeros((15, 3)),
        unit_region=np.zeros(15),
        n_neurons=np.ones(15),
        region_names=[object()],
        source="",
        signal="",
        voxel_um=None,
    )
    with pytest.raises(TypeError):
        m.save(path, dataset=mid)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]
