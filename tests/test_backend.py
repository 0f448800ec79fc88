"""Backends: selection, host transfers, the strict CuPy stand-in's refusals, seeded RNG streams."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from raysearch.backend import Backend, StrictArray, available_backends, cupy_available, get_backend
from raysearch.errors import ConfigError


def test_names_and_caching():
    assert get_backend("numpy").name == "numpy"
    assert get_backend("strict").name == "strict"
    assert get_backend("numpy") is get_backend("NumPy")
    bk = get_backend("strict")
    assert get_backend(bk) is bk
    auto = get_backend("auto")
    assert auto.name == ("cupy" if cupy_available() else "numpy")
    assert get_backend().name == auto.name
    assert set(available_backends()) >= {"numpy", "strict"}


@pytest.mark.parametrize("bad", ["torch", "", None, 3])
def test_unknown_backend_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="unknown backend"):
        get_backend(bad)


@pytest.mark.skipif(cupy_available(), reason="CuPy and a CUDA device are available here")
def test_forcing_cupy_without_it_explains():
    with pytest.raises(ConfigError, match="backend 'cupy' is not available"):
        get_backend("cupy")


def test_import_raysearch_does_not_import_cupy():
    code = (
        "import sys, raysearch, raysearch.backend, raysearch.crbm.units, raysearch.evaluation;"
        "raysearch.get_backend('numpy');"
        "print('cupy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_round_trip_and_dtypes(backend):
    host = np.arange(12, dtype=np.float64).reshape(3, 4)
    a = backend.asarray(host)
    assert a.dtype == np.float32 and a.shape == (3, 4)
    back = backend.to_numpy(a)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_array_equal(back, host.astype(np.float32))
    ints = backend.asarray(np.array([1, 2]), dtype=None)
    assert backend.to_numpy(ints).dtype.kind == "i"
    xp = backend.xp
    s = xp.exp(a).sum()
    assert float(s) == pytest.approx(np.exp(host).sum(), rel=1e-5)
    np.testing.assert_allclose(
        backend.to_numpy(backend.erfcx(a)),
        __import__("scipy.special").special.erfcx(host),
        rtol=1e-5,
    )
    backend.synchronize()


def test_strict_refuses_implicit_conversion():
    bk = get_backend("strict")
    xp = bk.xp
    a = bk.asarray(np.ones((2, 3)))
    host = np.ones((2, 3), dtype=np.float32)
    refusals = {
        "np.asarray": lambda: np.asarray(a),
        "np.array": lambda: np.array(a),
        "np.asarray(list)": lambda: np.asarray([a, a]),
        "array + ndarray": lambda: a + host,
        "ndarray + array": lambda: host + a,
        "ndarray * array": lambda: host * a,
        "array < ndarray": lambda: a < host,
        "array @ ndarray": lambda: a @ host.T,
        "np ufunc": lambda: np.exp(a),
        "np function": lambda: np.sum(a),
        "np.where": lambda: np.where(a > 0, a, 0),
        "xp with ndarray": lambda: xp.maximum(a, host),
        "setitem ndarray": lambda: a.__setitem__(slice(None), host),
        "scipy ufunc": lambda: __import__("scipy.special").special.expit(a),
    }
    for what, f in refusals.items():
        with pytest.raises(TypeError):
            f()
            pytest.fail(f"{what} did not raise")
    # what CuPy allows, strict allows
    assert isinstance(a + np.float32(1.0), StrictArray)
    assert isinstance(a * 2, StrictArray)
    assert float(a.sum()) == 6.0 and int(a[0, 0]) == 1 and bool(a[0, 0])
    assert f"{a.sum():.1f}" == "6.0"
    assert isinstance(a[0, 0], StrictArray)  # 0-d array, like CuPy
    assert isinstance(xp.asarray(host), StrictArray)  # explicit entry
    assert isinstance(a, xp.ndarray)
    b = xp.zeros((2, 3), dtype=xp.float32)
    b += a
    b[0] = xp.full(3, 5.0, dtype=xp.float32)
    np.testing.assert_array_equal(bk.to_numpy(b), [[5, 5, 5], [1, 1, 1]])
    out = xp.empty_like(a)
    bk.expit(a, out=out)
    assert float(out[0, 0]) == pytest.approx(1 / (1 + np.exp(-1)))
    with pytest.raises(TypeError):
        bk.to_numpy(host)  # a host array "returned" from the backend is a bug


def test_strict_to_numpy_is_a_copy():
    bk = get_backend("strict")
    a = bk.asarray(np.zeros(3))
    h = bk.to_numpy(a)
    h[:] = 7
    assert float(a.sum()) == 0.0
    host = np.zeros(3, dtype=np.float32)
    a = bk.asarray(host)
    host[:] = 1
    assert float(a.sum()) == 0.0


def test_rng_is_deterministic_and_independent(backend):
    a = backend.to_numpy(backend.rng(7, 1, 5).random((1000,)))
    b = backend.to_numpy(backend.rng(7, 1, 5).random((1000,)))
    c = backend.to_numpy(backend.rng(7, 1, 6).random((1000,)))
    d = backend.to_numpy(backend.rng(8, 1, 5).random((1000,)))
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    # independent streams: correlation of unrelated streams is small
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.15
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.05
    r = backend.rng(1)
    z = backend.to_numpy(r.standard_normal((20000,)))
    assert z.dtype == np.float32 and abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    k = backend.to_numpy(r.integers(3, 9, size=1000))
    assert k.min() == 3 and k.max() == 8
    p = backend.to_numpy(r.permutation(50))
    np.testing.assert_array_equal(np.sort(p), np.arange(50))
    with pytest.raises(ConfigError):
        backend.rng(-1)


def test_strict_rng_matches_numpy():
    n, s = get_backend("numpy"), get_backend("strict")
    np.testing.assert_array_equal(
        n.to_numpy(n.rng(3, 4).random((5, 5))), s.to_numpy(s.rng(3, 4).random((5, 5)))
    )


def test_backend_is_frozen():
    bk = get_backend("numpy")
    assert isinstance(bk, Backend)
    with pytest.raises(AttributeError):  # frozen dataclass
        bk.name = "x"
