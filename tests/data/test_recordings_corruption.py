"""Property test of the loaders on damaged files (issue 16): a valid small recording or model file,
truncated at random lengths or with random bits flipped, gives either a clear
:class:`~raysearch.errors.InputError` or a correct load, never another exception (a traceback).

Seeded and bounded (a few seconds). "Correct" means: after a truncation, the arrays equal the
original's (bytes that are gone cannot be read as other values); after bit flips, which HDF5 cannot
detect in raw data without checksums, a load must still satisfy the loader's promises (shapes,
0/1 spikes, finite coordinates and frame times that increase).
"""

from __future__ import annotations

import numpy as np
import pytest

from raysearch.data.recordings import load_recording
from raysearch.errors import InputError

N_CASES = int(__import__("os").environ.get("RAYSEARCH_CORRUPTION_CASES", "60"))


@pytest.fixture(scope="module")
def recording_bytes(tmp_path_factory):
    from raysearch.data.synthetic import write_synthetic_recording

    path = write_synthetic_recording(
        tmp_path_factory.mktemp("rec") / "fish.h5", n_neurons=40, n_frames=120, seed=0
    )
    return path.read_bytes(), load_recording(path)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    from raysearch.crbm import CRBM

    rng = np.random.default_rng(0)
    X = (rng.random((100, 12)) < 0.3).astype(np.float32)
    path = tmp_path_factory.mktemp("model") / "m.h5"
    m = CRBM(n_hidden=3, n_updates=10, batch_size=10, n_gibbs=1, backend="numpy").fit(X)
    m.save(path)
    return path.read_bytes(), CRBM.load(path)


def _damaged(data: bytes, rng, kind: str) -> bytes:
    if kind == "truncate":
        return data[: int(rng.integers(0, len(data)))]
    buf = bytearray(data)
    for pos in rng.integers(0, len(buf), size=int(rng.integers(1, 9))):
        buf[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)


def _check_recording(rec, ref, kind):
    assert rec.spikes.shape[1] == rec.coords.shape[0] == rec.labels.shape[0]
    assert rec.spikes.shape[0] == rec.times.shape[0]
    assert np.isfinite(rec.coords).all() and np.isfinite(rec.times).all()
    assert np.all(np.diff(rec.times)[np.diff(rec.times) != 0] != 0)
    if rec.spikes is not None:
        assert rec.spikes.dtype == bool
    if kind == "truncate":
        np.testing.assert_array_equal(rec.spikes, ref.spikes)
        np.testing.assert_array_equal(rec.dff, ref.dff)
        np.testing.assert_array_equal(rec.coords, ref.coords)
        np.testing.assert_array_equal(rec.times, ref.times)


@pytest.mark.parametrize("kind", ["truncate", "flip"])
def test_damaged_recording_is_an_input_error_or_a_correct_load(tmp_path, recording_bytes, kind):
    data, ref = recording_bytes
    rng = np.random.default_rng(16 if kind == "truncate" else 61)
    outcomes = {"error": 0, "loaded": 0}
    for i in range(N_CASES):
        path = tmp_path / f"case{i}.h5"
        path.write_bytes(_damaged(data, rng, kind))
        try:
            rec = load_recording(path)
        except InputError as exc:
            assert str(path) in str(exc), exc  # the message names the file
            outcomes["error"] += 1
            continue
        _check_recording(rec, ref, kind)
        outcomes["loaded"] += 1
    # both outcomes occur for flips; a random truncation nearly always loses data
    assert outcomes["error"] > 0
    if kind == "flip":
        assert outcomes["loaded"] > 0, outcomes


@pytest.mark.parametrize("kind", ["truncate", "flip"])
def test_damaged_model_file_is_an_input_error_or_a_correct_load(tmp_path, model_bytes, kind):
    from raysearch.crbm import CRBM

    data, ref = model_bytes
    rng = np.random.default_rng(7 if kind == "truncate" else 70)
    errors = 0
    for i in range(N_CASES):
        path = tmp_path / f"case{i}.h5"
        path.write_bytes(_damaged(data, rng, kind))
        try:
            m = CRBM.load(path)
        except InputError as exc:
            assert str(path) in str(exc), exc
            errors += 1
            continue
        assert m.weights_.shape == ref.weights_.shape
        if kind == "truncate":
            np.testing.assert_array_equal(m.weights_, ref.weights_)
    assert errors > 0
