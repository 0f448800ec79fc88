"""Is a Gaussian-visible, dReLU-hidden cRBM normalisable? Checks on the parameters.

Energy (the conventions of :mod:`raysearch.crbm.units`), v in R^N, h in R^M, W of shape (M, N)::

    E(v, h) = sum_i gamma_i/2 v_i^2 - g.v - h^T W v + sum_mu U_mu(h_mu)
    U_mu(h) = gp_mu/2 h+^2 + gm_mu/2 h-^2 + tp_mu h+ + tm_mu max(-h, 0)

Integrating out v (a Gaussian integral, finite iff every gamma_i > 0)::

    int exp(-E) dv = (2 pi)^(N/2) prod_i gamma_i^(-1/2)
                     exp( 1/2 (g + W^T h)^T Gamma^-1 (g + W^T h) - sum_mu U_mu(h_mu) )

so the marginal of h is exp(-E_h(h)) with::

    E_h(h) = 1/2 h^T (D(h) - C) h + (linear in h on each orthant) + const,
    C      = W Gamma^-1 W^T                     (M, M), positive semi-definite,
    D(h)   = diag(gp_mu if h_mu > 0 else gm_mu)

Z = int exp(-E_h) dh is finite iff the quadratic part grows on every ray: write
``q(u) = u^T (D(u) - C) u`` for unit vectors u (q is continuous: both branches give 0 at u_mu = 0).
On the orthant of sign pattern s (``s_mu u_mu >= 0``), D(u) = D_s is constant, so
q restricted to it is the quadratic form of ``Q_s = D_s - C``, and with ``u = S x`` (S = diag(s),
x >= 0) that of ``S Q_s S`` on the nonnegative orthant. Define the **margin**::

    mu* = min_{|u| = 1} q(u) = min_s min_{x >= 0, |x| = 1} x^T S Q_s S x

* mu* > 0: E_h >= mu*/2 |h|^2 - c |h| - c', Z is finite: **stable** (normalisable).
* mu* < 0: along the minimising ray u*, E_h(t u*) = mu*/2 t^2 + O(t) -> -inf, Z is infinite and
  block-Gibbs chains drift out along u* geometrically: **unstable**.
* mu* = 0 exactly (strictly copositive fails, copositive holds): the linear terms decide; this
  measure-zero boundary is reported as **undetermined**.

How fast chains run away: for large h, E[v | h] = Gamma^-1 W^T h and E[h | v] ~ D_s^-1 W v, so
one block-Gibbs step maps h to about D_s^-1 C h, whose growth factor along the worst direction
is 1 + |mu*|/g for a hidden precision g near the direction (1/(1 - |mu*|/g) exactly for one unit).
Chains e-fold about every g/|mu*| steps: a model with mu* = -1e-4 g needs ~10^4 steps per e-fold
and samples like a normalisable one in any evaluation, although it is not. Such **marginal**
models (-``rel_tol`` g <= mu* < 0, g = the median of min(gp, gm), ``rel_tol`` = 1e-3 by default:
slower than one e-fold per 1,000 steps) are reported as undetermined, with the reason; the
evaluation then runs long chains (:data:`raysearch.evaluation.UNDETERMINED_MIN_STEPS`) on them.
(Measured: the unstable fit of tests/test_stability.py, mu* = -0.0053, g ~ 2, grew from |v| 12
to 1,060 between steps 500 and 4,000 - about one e-fold per 800 steps.)

Three checks of increasing cost, each a small pure function of the parameters:

1. sufficient (:func:`sufficient_bound`): D_s >= D_min = diag(min(gp, gm)) for every s, so
   ``q(u) >= lambda_min(D_min - C)``; if that eigenvalue is > 0, stable. One symmetric
   eigenvalue problem, O(M^3).
2. necessary (:func:`necessary_witness`): any unit vector is a witness. Single units
   (u = ±e_mu): q = g±_mu - C_mumu, so ``g±_mu < ||w_mu||^2_{Gamma^-1}`` is unstable. Pairs: on
   the orthant of (s_mu, s_nu) the 2 x 2 form ``[[a, b], [b, c]]`` (a = g^s_mu - C_mumu,
   c = g^s_nu - C_nunu, b = -s_mu s_nu C_munu) is strictly copositive iff a > 0, c > 0 and
   b > -sqrt(a c); else its minimum over the unit quarter-circle is negative and the minimiser is
   a witness. Then a projected descent on q from the leading eigenvectors of C - D_min (each
   orthant's own eigen-step, clipped to the orthant) looks for a better witness. O(M^2) per pair
   sweep and per descent step.
3. exact (:func:`exact_margin`, M <= ``EXACT_MAX_HIDDEN``): by the KKT conditions on the sphere
   within an orthant, a minimiser x >= 0 with support J satisfies ``(S Q_s S)_JJ x_J = mu x_J``
   with x_J > 0: x_J is an eigenvector of a principal submatrix with one sign, and mu its
   eigenvalue (at a minimal such support the eigenspace is one-dimensional, so a numerical
   eigenvector finds it). Enumerating every support J and every sign pattern on J (D only
   matters on J) - 3^M - 1 small eigenproblems - and keeping the eigenpairs whose vector has one
   sign gives feasible points, the smallest of which is mu*.

:func:`check_stability` runs them in that order and returns a :class:`StabilityVerdict`.
Margins are in precision units (those of gamma); the boundary tolerance is relative to
max(max D, max diag C).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = [
    "StabilityVerdict",
    "coupling_matrix",
    "sufficient_bound",
    "necessary_witness",
    "exact_margin",
    "check_stability",
    "check_model",
    "EXACT_MAX_HIDDEN",
    "model_params",
    "REL_TOL",
]

#: Largest M for which :func:`check_stability` runs the exact enumeration (3^M eigenproblems of
#: size <= M: 59,049 at M = 10, a fraction of a second).
EXACT_MAX_HIDDEN = 8
_BOUNDARY_TOL = 1e-9


@dataclass(frozen=True)
class StabilityVerdict:
    """Outcome of :func:`check_stability`.

    Attributes
    ----------
    verdict : {"stable", "unstable", "undetermined"}
    margin : float
        Best estimate of mu* = min over unit u of q(u): the exact value when ``method`` is
        "exact", else ``lower`` for a stable verdict, ``upper`` otherwise (NaN when unknown).
    lower, upper : float
        Proven bounds lower <= mu* <= upper (-inf / +inf when unknown).
    method : str
        Which check decided ("parameters", "sufficient", "single unit", "pair", "descent", "exact",
        or "none").
    witness : ndarray (M,) or None
        A unit vector u with q(u) = ``upper`` < 0 (the direction the chains run away along).
    reason : str
        One sentence for users.
    """

    verdict: str
    margin: float
    lower: float
    upper: float
    method: str
    witness: np.ndarray | None = None
    reason: str = ""


def coupling_matrix(W, visible_gamma) -> np.ndarray:
    """C = W Gamma^-1 W^T, the couplings the Gaussian visibles induce between hidden units.

    Parameters
    ----------
    W : array (M, N)
    visible_gamma : array (N,), > 0

    Returns
    -------
    ndarray (M, M) float64, symmetric positive semi-definite.
    """
    W = np.asarray(W, dtype=np.float64)
    g = np.asarray(visible_gamma, dtype=np.float64)
    Ws = W / np.sqrt(g)
    C = Ws @ Ws.T
    return (C + C.T) / 2.0


def _q(u, gp, gm, C):
    """q(u) = u^T (D(u) - C) u."""
    d = np.where(u > 0, gp, gm)
    return float(np.sum(d * u * u) - u @ C @ u)


def sufficient_bound(gp, gm, C) -> float:
    """lambda_min(diag(min(gp, gm)) - C): a lower bound on mu* (> 0 proves stability)."""
    Dmin = np.minimum(np.asarray(gp, np.float64), np.asarray(gm, np.float64))
    A = np.diag(Dmin) - C
    return float(np.linalg.eigvalsh((A + A.T) / 2.0)[0])


def necessary_witness(gp, gm, C, n_descent: int = 8, steps: int = 200):
    """The lowest q(u) found on single units, pairs and by projected descent, with its u.

    Parameters
    ----------
    gp, gm : array (M,)
        Hidden precisions of the positive / negative branch.
    C : array (M, M)
        :func:`coupling_matrix`.
    n_descent : int
        Start directions for the descent (± the leading eigenvectors of C - D_min).
    steps : int
        Descent steps per start.

    Returns
    -------
    (upper, u, method) : float, ndarray (M,), str
        ``upper = q(u) >= mu*`` for the unit vector u; ``method`` says which search found it.
    """
    gp = np.asarray(gp, np.float64)
    gm = np.asarray(gm, np.float64)
    M = gp.shape[0]
    diagC = np.diag(C)
    best, best_u, best_m = np.inf, None, "none"
    # single units
    for g, sgn in ((gp, 1.0), (gm, -1.0)):
        a = g - diagC
        k = int(np.argmin(a))
        if a[k] < best:
            u = np.zeros(M)
            u[k] = sgn
            best, best_u, best_m = float(a[k]), u, "single unit"
    # pairs: for each (mu, nu) the orthant whose off-diagonal is -|C_munu| (the worst), both
    # sign choices with that product
    if M >= 2:
        iu, ju = np.triu_indices(M, k=1)
        cij = C[iu, ju]
        prod = np.where(cij >= 0, 1.0, -1.0)  # s_mu s_nu
        for s_mu in (1.0, -1.0):
            s_nu = prod * s_mu
            a = np.where(s_mu > 0, gp[iu], gm[iu]) - diagC[iu]
            c = np.where(s_nu > 0, gp[ju], gm[ju]) - diagC[ju]
            b = -np.abs(cij)
            # min eigenvalue of [[a, b], [b, c]] and its eigenvector (one-signed when b < 0)
            mid, rad = (a + c) / 2.0, np.sqrt(((a - c) / 2.0) ** 2 + b * b)
            lam = mid - rad
            k = int(np.argmin(lam))
            if lam[k] < best:
                # eigenvector of the smaller eigenvalue: (b, lam - a) or (lam - c, b)
                x = np.array([b[k], lam[k] - a[k]])
                if np.linalg.norm(x) < 1e-300:
                    x = np.array([lam[k] - c[k], b[k]])
                x = np.abs(x) / max(np.linalg.norm(x), 1e-300)
                u = np.zeros(M)
                u[iu[k]] = s_mu * x[0]
                u[ju[k]] = s_nu[k] * x[1]
                val = _q(u, gp, gm, C)
                if val < best:
                    best, best_u, best_m = val, u, "pair"
    # projected descent in the orthant of each start direction
    Dmin = np.minimum(gp, gm)
    evals, evecs = np.linalg.eigh(np.diag(Dmin) - C)
    scale = max(float(np.max(np.abs(evals))), 1e-12)
    for j in range(min(n_descent, M)):
        for sgn in (1.0, -1.0):
            u = sgn * evecs[:, j]
            s = np.where(u >= 0, 1.0, -1.0)
            Q = np.diag(np.where(s > 0, gp, gm)) - C
            step = 0.5 / max(scale, float(np.max(np.abs(np.linalg.eigvalsh(Q)))))
            for _ in range(steps):
                u = u - step * (Q @ u)
                u = np.where(s * u > 0, u, 0.0)
                n = np.linalg.norm(u)
                if n == 0:
                    break
                u /= n
            else:
                val = _q(u, gp, gm, C)
                if val < best:
                    best, best_u, best_m = val, u, "descent"
    return best, best_u, best_m


def exact_margin(gp, gm, C):
    """mu* exactly (up to eigensolver rounding), by enumerating supports and sign patterns.

    Cost: 3^M - 1 symmetric eigenproblems of size <= M (batched by support); use for small M.

    Returns
    -------
    (mu, u) : float, ndarray (M,)
        The minimum of q on the unit sphere and a minimiser.
    """
    gp = np.asarray(gp, np.float64)
    gm = np.asarray(gm, np.float64)
    C = np.asarray(C, np.float64)
    M = gp.shape[0]
    best, best_u = np.inf, None
    for size in range(1, M + 1):
        for J in itertools.combinations(range(M), size):
            J = np.array(J)
            CJ = C[np.ix_(J, J)]
            signs = np.array(list(itertools.product((1.0, -1.0), repeat=size)))  # (P, size)
            D = np.where(signs > 0, gp[J], gm[J])  # (P, size)
            A = -CJ[None] * signs[:, :, None] * signs[:, None, :]  # S(-C)S
            idx = np.arange(size)
            A[:, idx, idx] += D
            w, V = np.linalg.eigh(A)  # (P, k), (P, k, k)
            tol = 1e-9 * np.max(np.abs(V), axis=1, keepdims=True)
            pos = np.all(V > -tol, axis=1) | np.all(V < tol, axis=1)  # (P, k)
            w = np.where(pos, w, np.inf)
            p, k = np.unravel_index(int(np.argmin(w)), w.shape)
            if w[p, k] < best:
                best = float(w[p, k])
                u = np.zeros(M)
                u[J] = signs[p] * np.abs(V[p, :, k])
                best_u = u / np.linalg.norm(u)
    return best, best_u


#: Margins in [-REL_TOL g, 0) (g: median of min(gp, gm)) are "marginal": undetermined.
REL_TOL = 1e-3


def check_stability(
    W,
    visible_gamma,
    gamma_plus,
    gamma_minus,
    exact_max_hidden=None,
    n_descent: int = 8,
    rel_tol: float = REL_TOL,
) -> StabilityVerdict:
    """Normalisability verdict of a Gaussian–dReLU cRBM from its parameters.

    Parameters
    ----------
    W : array (M, N)
    visible_gamma : array (N,)
    gamma_plus, gamma_minus : array (M,)
    exact_max_hidden : int, optional
        Run :func:`exact_margin` when M is at most this (default :data:`EXACT_MAX_HIDDEN`).
    n_descent : int
        Start directions of the witness search.
    rel_tol : float
        Negative margins above ``-rel_tol * median(min(gp, gm))`` (chains e-fold more slowly than
        every ~1/rel_tol steps) are reported as undetermined ("marginal"); 0 makes every proven
        negative margin unstable.

    Returns
    -------
    StabilityVerdict
    """
    if exact_max_hidden is None:
        exact_max_hidden = EXACT_MAX_HIDDEN
    W = np.asarray(W, np.float64)
    vg = np.asarray(visible_gamma, np.float64)
    gp = np.asarray(gamma_plus, np.float64)
    gm = np.asarray(gamma_minus, np.float64)
    if not all(np.all(np.isfinite(a)) for a in (W, vg, gp, gm)):
        return StabilityVerdict(
            "unstable", float("nan"), -np.inf, np.inf, "parameters", reason="non-finite parameters"
        )
    if np.any(vg <= 0):
        return StabilityVerdict(
            "unstable",
            -np.inf,
            -np.inf,
            -np.inf,
            "parameters",
            reason=f"{int(np.sum(vg <= 0))} visible precision(s) <= 0: the "
            "Gaussian visible units are not normalisable",
        )
    C = coupling_matrix(W, vg)
    scale = max(float(np.max(np.abs(np.concatenate([gp, gm])))), float(np.max(np.diag(C))), 1e-30)
    tol = _BOUNDARY_TOL * scale
    marginal = max(tol, float(rel_tol) * float(np.median(np.minimum(gp, gm))))
    lower = sufficient_bound(gp, gm, C)
    M = gp.shape[0]
    if lower > tol:
        return StabilityVerdict(
            "stable",
            lower,
            lower,
            np.inf,
            "sufficient",
            reason=f"visible precisions dominate the couplings "
            f"(lambda_min(D_min - W Gamma^-1 W^T) = {lower:.3g} > 0)",
        )
    if M <= exact_max_hidden:
        mu, u = exact_margin(gp, gm, C)
        if mu > tol:
            return StabilityVerdict(
                "stable",
                mu,
                mu,
                mu,
                "exact",
                reason=f"copositive on every sign pattern (margin {mu:.3g})",
            )
        if mu < -marginal:
            return StabilityVerdict(
                "unstable", mu, mu, mu, "exact", witness=u, reason=_unstable_reason(mu, u)
            )
        if mu < -tol:
            return StabilityVerdict(
                "undetermined", mu, mu, mu, "exact", witness=u, reason=_marginal_reason(mu)
            )
        return StabilityVerdict(
            "undetermined",
            mu,
            mu,
            mu,
            "exact",
            reason="on the normalisability boundary (margin 0): the linear terms decide",
        )
    upper, u, method = necessary_witness(gp, gm, C, n_descent=n_descent)
    if upper < -marginal:
        return StabilityVerdict(
            "unstable", upper, lower, upper, method, witness=u, reason=_unstable_reason(upper, u)
        )
    if upper < -tol:
        return StabilityVerdict(
            "undetermined", upper, lower, upper, method, witness=u, reason=_marginal_reason(upper)
        )
    return StabilityVerdict(
        "undetermined",
        float("nan"),
        lower,
        upper,
        "none",
        reason=f"the parameter checks cannot decide (margin in "
        f"[{lower:.3g}, {upper:.3g}]); only sampling can tell",
    )


def _marginal_reason(mu):
    return (
        f"marginally not normalisable (margin {mu:.3g} < 0, within the relative tolerance): "
        "chains run away too slowly for the parameters to decide; only sampling can tell"
    )


def _unstable_reason(mu, u):
    k = np.flatnonzero(np.abs(u) > 1e-3 * np.max(np.abs(u)))
    units = ", ".join(f"{i}{'+' if u[i] > 0 else '-'}" for i in k[:6]) + (
        ", ..." if k.size > 6 else ""
    )
    return (
        f"not normalisable: the couplings W Gamma^-1 W^T exceed the hidden precisions along "
        f"hidden units [{units}] (margin {mu:.3g} < 0); Gibbs chains run away along it"
    )


def model_params(model):
    """(W, visible_gamma, gamma_plus, gamma_minus) host arrays of a fitted gaussian CRBM."""
    return (
        np.asarray(model.weights_),
        np.asarray(model.gamma_),
        np.asarray(model.gamma_plus_),
        np.asarray(model.gamma_minus_),
    )


def check_model(model, **kw) -> StabilityVerdict | None:
    """:func:`check_stability` of a fitted CRBM; None for Bernoulli visibles (always
    normalisable: v is bounded and each dReLU unit has gp, gm > 0)."""
    if getattr(model, "visible", "bernoulli") != "gaussian":
        return None
    return check_stability(*model_params(model), **kw)
