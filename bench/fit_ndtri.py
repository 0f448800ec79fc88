"""Fit the Chebyshev coefficients of raysearch.crbm.cpu_kernels' inverse normal CDF (``_ndtri32``).

ndtri(p) is approximated in three pieces, each a Chebyshev series fitted by least squares at
4,000 Chebyshev nodes against ``scipy.special.ndtri`` (float64):

* central, |p - 1/2| <= 0.425:  ndtri(p) = q R(q^2), q = p - 1/2, r = q^2 in [0, 0.180625];
* tails, min(p, 1 - p) < 0.075: with s = sqrt(-2 log min(p, 1 - p)), ndtri = -/+ s T(s),
  T fitted on s in [2.25, 5] and on [5, 14.5] (14.5 covers the smallest float32, 1.4e-45).

Prints the coefficient tuples to paste into cpu_kernels.py and the fits' maximal relative
errors in float64 and when evaluated by Clenshaw's recurrence in float32 (as the kernel does).
Run: ``python bench/fit_ndtri.py``.
"""

import numpy as np
from numpy.polynomial import chebyshev as C
from scipy.special import ndtri

PIECES = {  # name: (function of the piece's variable, lo, hi, degree)
    "_NDTRI_CENTRAL": (lambda r: ndtri(0.5 + np.sqrt(r)) / np.sqrt(r), 0.0, 0.425**2, 12),
    "_NDTRI_TAIL1": (lambda s: -ndtri(np.exp(-s * s / 2)) / s, 2.25, 5.0, 10),
    "_NDTRI_TAIL2": (lambda s: -ndtri(np.exp(-s * s / 2)) / s, 5.0, 14.5, 12),
}


def chebyshev_fit(f, lo, hi, deg, n=4000):
    t = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    return C.chebfit(t, f(np.maximum(lo + (t + 1) * (hi - lo) / 2, 1e-300)), deg)


def clenshaw32(c, t):
    c = np.asarray(c, np.float32)
    t = np.asarray(t, np.float32)
    t2 = np.float32(2) * t
    b1 = np.zeros_like(t)
    b2 = np.zeros_like(t)
    for ck in c[:0:-1]:
        b1, b2 = ck + t2 * b1 - b2, b1
    return c[0] + t * b1 - b2


if __name__ == "__main__":
    for name, (f, lo, hi, deg) in PIECES.items():
        c = chebyshev_fit(f, lo, hi, deg)
        x = np.linspace(lo, hi, 100001)[1:]
        t = (x - lo) * (2 / (hi - lo)) - 1
        e64 = np.max(np.abs(C.chebval(t, c) / f(x) - 1))
        e32 = np.max(np.abs(clenshaw32(c, t) / f(x) - 1))
        print(
            f"# {name}: degree {deg} on [{lo}, {hi}]; max rel. error {e64:.1e} (float64), "
            f"{e32:.1e} (float32 Clenshaw)"
        )
        print(f"{name} = ({', '.join(repr(float(v)) for v in c)})")
