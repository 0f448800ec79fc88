"""Fixtures of the analyzer tests (helpers live in analysis_helpers.py)."""

import pytest


@pytest.fixture(scope="session")
def small_dataset():
    from raysearch.data.preprocessing import preprocess
    from raysearch.data.synthetic import make_synthetic_recording

    rec, gt = make_synthetic_recording(n_neurons=300, n_frames=1500, seed=0)
    return preprocess(rec), gt
