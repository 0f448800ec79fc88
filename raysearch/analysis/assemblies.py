"""Cell assemblies of a cRBM: the neurons each hidden unit connects to strongly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raysearch.errors import ConfigError

#: default membership threshold, relative to each hidden unit's largest |w|
DEFAULT_THRESHOLD = 0.3


@dataclass
class Assemblies:
    """Members of each hidden unit's assembly.

    Attributes
    ----------
    membership : ndarray of bool, shape (M, N)
        ``|w_{mu i}| >= threshold * max_i |w_{mu i}|`` (and the unit's max is non-zero).
    table : DataFrame
        One row per hidden unit: unit, size, n_regions, main_region, regions (";"-joined names,
        by member count), max_abs_weight, hidden_var.
    threshold : float
    """

    membership: np.ndarray
    table: pd.DataFrame
    threshold: float


def assemblies(
    weights, unit_region=None, region_names=None, hidden_var=None, threshold=DEFAULT_THRESHOLD
) -> Assemblies:
    """Assemblies per hidden unit.

    Parameters
    ----------
    weights : ndarray, shape (M, N)
    unit_region : ndarray of int, shape (N,), optional
        Region index per visible unit (-1 = none).
    region_names : list of str, optional
    hidden_var : ndarray, shape (M,), optional
    threshold : float in (0, 1]

    Returns
    -------
    Assemblies
    """
    if not 0 < threshold <= 1:
        raise ConfigError(f"assembly threshold must be in (0, 1], got {threshold}")
    A = np.abs(np.asarray(weights, dtype=np.float64))
    M, N = A.shape
    peak = A.max(axis=1, keepdims=True)
    member = (A >= threshold * peak) & (peak > 0)
    if unit_region is None:
        unit_region = np.full(N, -1)
    unit_region = np.asarray(unit_region)
    R = len(region_names) if region_names is not None else int(max(unit_region.max(), -1)) + 1
    names = list(region_names) if region_names is not None else [f"region{r}" for r in range(R)]
    rows = []
    for mu in range(M):
        reg = unit_region[member[mu]]
        reg = reg[reg >= 0]
        counts = np.bincount(reg, minlength=R) if R else np.zeros(0, int)
        order = [r for r in np.argsort(-counts, kind="stable") if counts[r] > 0]
        rows.append(
            {
                "unit": mu,
                "size": int(member[mu].sum()),
                "n_regions": len(order),
                "main_region": names[order[0]] if order else "",
                "regions": ";".join(names[r] for r in order),
                "max_abs_weight": float(peak[mu, 0]),
                "hidden_var": float(hidden_var[mu]) if hidden_var is not None else np.nan,
            }
        )
    return Assemblies(member, pd.DataFrame(rows), float(threshold))
