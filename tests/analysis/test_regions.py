"""Region-level couplings (blockwise vs dense), their comparison and the structural CSV."""

import numpy as np
import pandas as pd
import pytest

from raysearch.analysis import (
    LowRankCouplings,
    consistency,
    load_structural,
    log_pearson,
    region_couplings,
    structural_spearman,
)
from raysearch.analysis.regions import region_couplings_dense
from raysearch.errors import InputError


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_blockwise_equals_dense(chunk):
    rng = np.random.default_rng(0)
    N, M, R = 90, 6, 5
    W, c = rng.normal(size=(M, N)), rng.random(M)
    reg = rng.integers(-1, R, N)
    reg[:2] = 3  # make sure region 3 has >= 2 units
    reg[reg == 4] = 0  # region 4 empty -> NaN row/col
    J = LowRankCouplings.from_factors(W, c).dense()
    got = region_couplings(W, c, reg, n_regions=R, chunk=chunk, dtype=np.float64)
    ref = region_couplings_dense(J, reg, n_regions=R)
    np.testing.assert_allclose(got, ref, rtol=1e-10, equal_nan=True)
    got32 = region_couplings(W, c, reg, n_regions=R, chunk=chunk)  # default float32 blocks
    np.testing.assert_allclose(got32, ref, rtol=1e-5, equal_nan=True)
    assert np.isnan(got[4]).all()
    np.testing.assert_allclose(got, got.T, rtol=1e-12, equal_nan=True)


def test_single_unit_region_diagonal_is_nan():
    W, c = np.ones((1, 3)), np.ones(1)
    out = region_couplings(W, c, np.array([0, 1, 1]), n_regions=2)
    assert np.isnan(out[0, 0])
    assert out[1, 1] == pytest.approx(1.0) and out[0, 1] == pytest.approx(1.0)


def test_log_pearson_and_consistency():
    rng = np.random.default_rng(1)
    a = np.exp(rng.normal(size=(6, 6)))
    a = a + a.T
    b = a**2  # log10 b = 2 log10 a: correlation 1
    c = a.copy()
    c[0, 1] = c[1, 0] = 0.0  # zeros are excluded, not log'ed
    r, n = log_pearson(a, b)
    assert r == pytest.approx(1.0) and n == 21
    r, n = log_pearson(a, c)
    assert r == pytest.approx(1.0) and n == 20
    df = consistency([a, b, np.exp(rng.normal(size=(6, 6)))], labels=["x", "y", "z"])
    assert list(df.index) == ["x", "y", "z"]
    assert df.loc["x", "y"] == pytest.approx(1.0)
    assert abs(df.loc["x", "z"]) < 0.9


def test_structural_spearman_uses_nonzero_upper_triangle():
    rng = np.random.default_rng(2)
    S = rng.random((5, 5))
    S = S + S.T
    S[0, 2] = S[2, 0] = 0.0
    F = S**3  # monotone in S on non-zero entries
    F[0, 2] = F[2, 0] = 100.0  # would break the rank order if zeros were used
    F[3, 1] = -5.0  # lower triangle: ignored
    rho, n = structural_spearman(F, S)
    assert rho == pytest.approx(1.0)
    assert n == 14
    with pytest.raises(InputError):
        structural_spearman(F, S[:4, :4])


def test_load_structural(tmp_path):
    names = ["A", "B", "C"]
    S = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], float)
    # named, in another order
    pd.DataFrame(S[::-1, ::-1], index=names[::-1], columns=names[::-1]).to_csv(tmp_path / "s.csv")
    np.testing.assert_array_equal(load_structural(tmp_path / "s.csv", names), S)
    np.savetxt(tmp_path / "bare.csv", S, delimiter=",")
    np.testing.assert_array_equal(load_structural(tmp_path / "bare.csv", names), S)
    with pytest.raises(InputError, match="lacks regions"):
        load_structural(tmp_path / "s.csv", names + ["D"])
    with pytest.raises(InputError, match="expected"):
        load_structural(tmp_path / "bare.csv", names[:2])
    with pytest.raises(InputError, match="does not exist"):
        load_structural(tmp_path / "none.csv", names)


def test_load_structural_from_synthetic_file(tmp_path):
    from raysearch.data.synthetic import load_ground_truth, write_synthetic_recording

    path = write_synthetic_recording(tmp_path / "fish.h5", n_neurons=120, n_frames=200, seed=0)
    gt = load_ground_truth(path)
    names = list(gt.region_names)
    np.testing.assert_array_equal(load_structural(path, names), gt.structural)
    sub = names[::-1][:4]
    idx = [names.index(n) for n in sub]
    np.testing.assert_array_equal(load_structural(path, sub), gt.structural[np.ix_(idx, idx)])
    with pytest.raises(InputError, match="lacks regions"):
        load_structural(path, ["Nowhere"])
