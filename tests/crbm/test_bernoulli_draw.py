"""The CPU Bernoulli draw decides most entries with one random byte and refines the 1/256 it cannot
decide with a float32 uniform. A bug in that refinement biases P(v=1) by up to 1/256, which a
20,000-draw test cannot see; these tests use 4 million draws per probability, placed where the
refinement matters (mid-way inside a byte bin, where a wrong refinement shifts the mean by 1/512,
about 8 standard errors at p = 0.5)."""

import numpy as np
import pytest

from raysearch.crbm import units

N_DRAWS = 4_000_000
PROBS = [0.5 / 256, 10.5 / 256, 0.5 + 0.5 / 256, 200.3 / 256, 255.5 / 256, 1e-3, 0.9999]


@pytest.mark.parametrize("p", PROBS)
def test_bernoulli_frequency_matches_p_with_4m_draws(backend, p):
    logit = np.float32(np.log(p) - np.log1p(-p))
    I = backend.asarray(np.full((N_DRAWS // 1000, 1000), logit, dtype=np.float32))
    g = backend.asarray(np.zeros(1000, dtype=np.float32))
    v = backend.to_numpy(units.bernoulli_sample(I, g, backend, backend.rng(7, int(p * 1e6))))
    p32 = 1.0 / (1.0 + np.exp(-np.float64(logit)))  # the float32 logit's own probability
    mean = v.mean(dtype=np.float64)
    se = np.sqrt(p32 * (1 - p32) / v.size)
    assert abs(mean - p32) < 5 * se, (p, mean, p32, (mean - p32) / se)


def test_refinement_is_exercised_and_exact_inside_one_byte_bin(backend):
    # p = (k + 0.25)/256: v = 1 for bytes < k, 0 for bytes > k, and with probability 0.25 on byte k.
    k = 100
    p = (k + 0.25) / 256
    logit = np.float32(np.log(p) - np.log1p(-p))
    I = backend.asarray(np.full((4000, 1000), logit, dtype=np.float32))
    g = backend.asarray(np.zeros(1000, dtype=np.float32))
    v = backend.to_numpy(units.bernoulli_sample(I, g, backend, backend.rng(3)))
    p32 = 1.0 / (1.0 + np.exp(-np.float64(logit)))
    se = np.sqrt(p32 * (1 - p32) / v.size)
    # always-0 or always-1 refinement would be off by 0.25/256 or 0.75/256 (> 4 and > 12 se)
    assert abs(v.mean(dtype=np.float64) - p32) < 3.5 * se
