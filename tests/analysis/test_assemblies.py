import numpy as np
import pytest

from raysearch.analysis import assemblies
from raysearch.errors import ConfigError


def test_assemblies_members_sizes_regions():
    W = np.zeros((3, 8))
    W[0, [0, 1, 5]] = [1.0, -0.8, 0.1]  # 0.1 < 0.3 * 1.0: not a member
    W[1, [2, 3, 4, 6]] = [0.5, 0.5, 0.4, 0.2]
    # unit 2: all zero -> empty assembly
    region = np.array([0, 0, 1, 1, 2, 2, -1, 1])
    a = assemblies(W, region, ["A", "B", "C"], hidden_var=np.ones(3), threshold=0.3)
    assert a.membership.shape == (3, 8)
    assert list(np.flatnonzero(a.membership[0])) == [0, 1]
    assert list(np.flatnonzero(a.membership[1])) == [2, 3, 4, 6]
    assert not a.membership[2].any()
    t = a.table
    assert list(t["size"]) == [2, 4, 0]
    assert list(t["n_regions"]) == [1, 2, 0]  # unit 1: B (2), C (1); the unlabelled one skipped
    assert t.loc[1, "regions"] == "B;C" and t.loc[1, "main_region"] == "B"
    with pytest.raises(ConfigError):
        assemblies(W, threshold=0)
