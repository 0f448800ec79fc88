"""Shared test fixtures.

* Every test run gets a temporary HOME (Ray writes ``~/.ray``) and Ray's token auth off, except
  tests that are about auth, which set ``RAY_AUTH_MODE`` themselves in a subprocess.
* ``ray_session`` is one local Ray instance shared by the whole run (starting Ray costs ~4 s).
"""

from __future__ import annotations

import os
import tempfile

# Must happen before anything imports ray.
_HOME = tempfile.mkdtemp(prefix="raysearch-test-home-")
os.environ["HOME"] = _HOME
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.pop("RAY_ADDRESS", None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance (2 CPUs, no dashboard) shared by every test that asks for it."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            num_gpus=0,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


# --- section: numerics (backend fixture) ---------------------------------------------------------
def _backend_params():
    from raysearch.backend import cupy_available

    no_gpu = pytest.mark.skipif(not cupy_available(), reason="no CUDA device / CuPy not installed")
    return [
        pytest.param("numpy", id="numpy"),
        pytest.param("strict", id="strict"),
        pytest.param("cupy", id="cupy", marks=[no_gpu, pytest.mark.gpu]),
    ]


@pytest.fixture(params=_backend_params())
def backend(request):
    """Every available array backend: "numpy", "strict" (CuPy-like CPU stand-in), "cupy"."""
    from raysearch.backend import get_backend

    return get_backend(request.param)


# --- end section: numerics -----------------------------------------------------------------------
