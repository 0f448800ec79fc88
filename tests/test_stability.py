"""Normalisability checks of Gaussian–dReLU cRBMs (raysearch.stability): known answers on tiny
models (brute force over the unit sphere, hand-computed 2 x 2 cases) and an independent Gibbs
sampler that explodes exactly where the check says unstable."""

import copy

import numpy as np
import pytest
from scipy import special, stats

from raysearch.stability import (
    check_stability,
    coupling_matrix,
    exact_margin,
    necessary_witness,
    sufficient_bound,
)


def brute_margin(gp, gm, C, n=200_000, seed=0):
    """min over random unit vectors u of u^T (D(u) - C) u (an upper bound close to mu*)."""
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n, len(gp)))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    D = np.where(U > 0, gp, gm)
    return float(((D * U * U).sum(1) - np.einsum("bi,ij,bj->b", U, C, U)).min())


def random_model(rng, M, N, scale=0.6):
    return (
        rng.normal(0, scale, (M, N)),
        rng.uniform(0.5, 1.5, N),
        rng.uniform(0.2, 2, M),
        rng.uniform(0.2, 2, M),
    )


def test_coupling_matrix():
    W = np.array([[1.0, 2.0], [0.0, 3.0]])
    g = np.array([2.0, 4.0])
    assert np.allclose(coupling_matrix(W, g), W @ np.diag(1 / g) @ W.T)


@pytest.mark.parametrize("seed", range(12))
def test_exact_margin_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    M = 1 + seed % 4
    W, vg, gp, gm = random_model(rng, M, 5, scale=0.3 + 0.1 * (seed % 3))
    C = coupling_matrix(W, vg)
    mu, u = exact_margin(gp, gm, C)
    brute = brute_margin(gp, gm, C)
    assert mu <= brute + 1e-9  # brute force only finds feasible points
    assert brute - mu < 0.02 * (1 + abs(mu))  # and comes close to the minimum
    assert np.isclose(np.linalg.norm(u), 1.0)
    d = np.where(u > 0, gp, gm)
    assert np.isclose(np.sum(d * u * u) - u @ C @ u, mu)  # the minimiser attains it
    assert sufficient_bound(gp, gm, C) <= mu + 1e-9  # the cheap bound is a lower bound
    upper, w, _ = necessary_witness(gp, gm, C)
    assert upper >= mu - 1e-9  # witnesses are upper bounds


def test_single_unit_closed_form():
    # M = 1: q(+1) = gp - ||w||^2/gamma, q(-1) = gm - ||w||^2/gamma
    W = np.array([[1.0, 1.0]])  # ||w||^2_{Gamma^-1} = 2
    vg = np.ones(2)
    for gp, gm, want in ((3.0, 2.5, "stable"), (3.0, 1.5, "unstable"), (1.9, 4.0, "unstable")):
        v = check_stability(W, vg, [gp], [gm])
        assert v.verdict == want, (gp, gm, v)
        assert np.isclose(v.margin, min(gp, gm) - 2.0)
    v = check_stability(W, vg, [3.0], [1.5], exact_max_hidden=0)  # the cheap path alone
    assert v.verdict == "unstable" and v.method == "single unit"
    assert v.witness[0] == -1.0  # the negative branch


def _pair_model(c12):
    """C = [[1, c12], [c12, 1]] through W = chol(C)^T, Gamma = I."""
    C = np.array([[1.0, c12], [c12, 1.0]])
    return np.linalg.cholesky(C), np.ones(2), C


def test_sign_pattern_decides_where_the_cheap_bound_cannot():
    # unit 0 is soft on its positive branch, unit 1 on its negative branch: the only orthant with
    # both soft branches is (+, -), where the off-diagonal is +C12 > 0 (copositive); the
    # eigenvalue bound uses min(gp, gm) everywhere and cannot see this
    W, vg, C = _pair_model(0.5)
    gp, gm = np.array([1.2, 3.0]), np.array([3.0, 1.2])
    assert sufficient_bound(gp, gm, C) < 0  # -0.3: undetermined
    cheap = check_stability(W, vg, gp, gm, exact_max_hidden=0)
    assert cheap.verdict == "undetermined"
    exact = check_stability(W, vg, gp, gm)
    assert exact.verdict == "stable" and exact.method == "exact"
    # by hand: (+,+) and (-,-): [[0.2, -0.5], [-0.5, 2]] is PD (det 0.15), min eig 0.0757;
    # (+,-): diag 0.2 with off-diagonal +0.5 on the orthant -> min over the quarter circle 0.2
    want = (2.2 - np.sqrt(1.8**2 + 1.0)) / 2
    assert np.isclose(exact.margin, want)
    assert np.isclose(brute_margin(gp, gm, C), want, atol=1e-4)
    # swap the soft branches onto the same orthant type: now (-,-) has both soft branches and
    # off-diagonal -0.5: unstable, found both by the exact check and by the cheap pair search
    gp2, gm2 = np.array([3.0, 3.0]), np.array([1.2, 1.2])
    assert check_stability(W, vg, gp2, gm2).verdict == "unstable"
    pair = check_stability(W, vg, gp2, gm2, exact_max_hidden=0)
    assert pair.verdict == "unstable" and np.isclose(pair.margin, 0.2 - 0.5)
    assert np.all(pair.witness <= 0)


def test_boundary_is_undetermined_and_bad_parameters_unstable():
    W = np.array([[1.0, 1.0]])
    v = check_stability(W, np.ones(2), [2.0], [2.0])  # margin exactly 0
    assert v.verdict == "undetermined" and abs(v.margin) < 1e-12
    assert check_stability(W, np.array([1.0, 0.0]), [5.0], [5.0]).verdict == "unstable"
    assert check_stability(W * np.nan, np.ones(2), [5.0], [5.0]).verdict == "unstable"


def test_exact_and_cheap_agree_on_larger_models():
    rng = np.random.default_rng(3)
    for scale in (0.05, 0.15, 0.4):
        W, vg, gp, gm = random_model(rng, 7, 30, scale=scale)
        ex = check_stability(W, vg, gp, gm)
        ch = check_stability(W, vg, gp, gm, exact_max_hidden=0)
        assert ex.method in ("sufficient", "exact")
        if ch.verdict != "undetermined":
            assert ch.verdict == ex.verdict
        assert ch.lower <= ex.margin + 1e-9 and ch.upper >= ex.margin - 1e-9


# ----------------------------------------------------------------- an independent Gibbs sampler
def _log_mills(x):
    return special.log_ndtr(-x) + 0.5 * x * x + 0.5 * np.log(2 * np.pi)


def _sample_drelu(I, gp, gm, tp, tm, rng):
    """h ~ P(h | I) ∝ exp(-U(h) + I h): two truncated normals (scipy), not raysearch code."""
    lzp = _log_mills((tp - I) / np.sqrt(gp)) - 0.5 * np.log(gp)
    lzm = _log_mills((tm + I) / np.sqrt(gm)) - 0.5 * np.log(gm)
    p_pos = special.expit(lzp - lzm)
    mp, sp = (I - tp) / gp, 1 / np.sqrt(gp)  # h > 0 branch: N(mp, sp^2) on [0, inf)
    mn, sn = -(tm + I) / gm, 1 / np.sqrt(gm)  # -h > 0 branch: N(mn, sn^2) on [0, inf)
    hp = stats.truncnorm.rvs(-mp / sp, np.inf, loc=mp, scale=sp, random_state=rng)
    hn = -stats.truncnorm.rvs(-mn / sn, np.inf, loc=mn, scale=sn, random_state=rng)
    return np.where(rng.random(I.shape) < p_pos, hp, hn)


def independent_chain_max(
    W, vg, gp, gm, n_steps=1500, n_chains=20, seed=0, limit=1e6, tp=None, tm=None, g=None
):
    """Largest |v| seen by block-Gibbs chains (v | h Gaussian, h | v dReLU) started at v = 0."""
    rng = np.random.default_rng(seed)
    M, N = W.shape
    tp = np.zeros(M) if tp is None else np.asarray(tp, np.float64)
    tm = np.zeros(M) if tm is None else np.asarray(tm, np.float64)
    g = np.zeros(N) if g is None else np.asarray(g, np.float64)
    v = np.zeros((n_chains, N))
    top = 0.0
    with np.errstate(all="ignore"):
        for _ in range(n_steps):
            h = _sample_drelu(v @ W.T, gp, gm, tp, tm, rng)
            v = (g + h @ W) / vg + rng.normal(size=v.shape) / np.sqrt(vg)
            top = max(top, float(np.max(np.abs(v))))
            if not np.isfinite(top) or top > limit:
                return np.inf
    return top


def test_gibbs_explodes_exactly_where_the_check_says_unstable():
    W, vg, _ = _pair_model(0.5)
    stable = (np.array([1.2, 3.0]), np.array([3.0, 1.2]))  # needs the exact check
    unstable = (np.array([3.0, 3.0]), np.array([1.2, 1.2]))  # margin -0.3
    assert check_stability(W, vg, *stable).verdict == "stable"
    assert check_stability(W, vg, *unstable).verdict == "unstable"
    assert independent_chain_max(W, vg, *stable) < 50
    assert independent_chain_max(W, vg, *unstable) == np.inf


# ----------------------------------------------------------------- wiring: fit, evaluate, files
def _correlated_data(T=600, N=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(T, 2)) @ rng.normal(size=(2, N)) + 0.3 * rng.normal(size=(T, N))
    return ((X - X.mean(0)) / X.std(0)).astype(np.float32)


def _chain_max_of(model, **kw):
    return independent_chain_max(
        model.weights_,
        model.gamma_,
        model.gamma_plus_,
        model.gamma_minus_,
        tp=model.theta_plus_,
        tm=model.theta_minus_,
        g=model.fields_,
        **kw,
    )


@pytest.fixture(scope="module")
def unstable_fit():
    """lam = 0 and a large learning rate on strongly correlated z-scored data: with 16 hidden
    units the fit leaves the normalisable region within its first 100 updates."""
    from raysearch.crbm import CRBM

    X = _correlated_data()
    m = CRBM(
        n_hidden=16,
        visible="gaussian",
        lam=0.0,
        n_updates=600,
        batch_size=50,
        learning_rate=1e-2,
        seed=0,
        backend="numpy",
    )
    return m.fit(X, callback_every=50), X


def test_fit_stops_early_when_unstable_and_says_why(unstable_fit, tmp_path):
    from raysearch.crbm import CRBM
    from raysearch.stability import check_model

    m, _ = unstable_fit
    assert m.diverged_ and m.n_updates_done_ < 600 and m.n_updates_done_ % 50 == 0
    assert m.diverged_reason_.startswith("unstable: not normalisable")
    assert check_model(m).verdict == "unstable"  # the saved (sign-gauged) parameters too
    assert np.all(np.isfinite(m.weights_))  # caught before anything overflowed
    # an independent sampler runs away, slowly (margin -0.005: |v| 12 after 500 steps, 47 after
    # 2,000, 1,060 after 4,000 in one run) - why short evaluation chains miss such models
    assert _chain_max_of(m, n_steps=6000, n_chains=5, limit=1e4) == np.inf
    path = m.save(tmp_path / "m.h5")
    back = CRBM.load(path)
    assert back.diverged_ and back.diverged_reason_ == m.diverged_reason_


def test_stable_fit_runs_to_the_end():
    from raysearch.crbm import CRBM
    from raysearch.stability import check_model

    m = CRBM(
        n_hidden=4,
        visible="gaussian",
        lam=0.0,
        n_updates=300,
        batch_size=50,
        learning_rate=1e-3,
        seed=0,
        backend="numpy",
    ).fit(_correlated_data(), callback_every=50)
    assert not m.diverged_ and m.diverged_reason_ == "" and m.n_updates_done_ == 300
    assert check_model(m).verdict == "stable"
    assert _chain_max_of(m) < 100


def test_evaluate_flags_unstable_gaussian_models(unstable_fit):
    from types import SimpleNamespace

    from raysearch.evaluation import evaluate

    m, X = unstable_fit
    ds = SimpleNamespace(train=X[:400], test=X[400:])
    kw = dict(n_chains=20, n_burnin=50, n_samples=5, n_between=5)
    m = copy.copy(m)
    m.diverged_ = False  # judged on its parameters alone
    res = evaluate(m, ds, **kw)
    assert res.unstable and res.bad and "not normalisable" in res.unstable_reason
    assert getattr(res, "bad_reason", "unstable") == "unstable"
    assert res.settings["stability"] == "unstable" and res.settings["stability_margin"] < 0
    d = res.to_dict()
    assert d["unstable"] is True and d["unstable_reason"] == res.unstable_reason
    # a scaled-down copy is normalisable (C scales with |W|^2): evaluated normally
    small = SimpleNamespace(
        **{
            k: getattr(m, k)
            for k in (
                "fields_",
                "gamma_plus_",
                "gamma_minus_",
                "theta_plus_",
                "theta_minus_",
                "gamma_",
            )
        },
        weights_=m.weights_ * 0.05,
        visible="gaussian",
        penalty="l2l1",
        lam=0.0,
        backend="numpy",
    )
    res = evaluate(small, ds, **kw)
    assert not res.unstable and res.unstable_reason == "" and res.settings["stability"] == "stable"
    assert res.n_model_samples > 0 and np.isfinite(res.nrmse["vh"])  # it was sampled
    assert getattr(res, "bad_reason", "") != "unstable"


def test_undetermined_models_get_long_evaluation_chains():
    """Four copies of the pair model that needs the exact check, plus one plain unit: M = 9 is
    above the exact limit, the eigenvalue bound fails and no witness exists (it is stable), so
    the verdict is undetermined and evaluate() lengthens the chains to UNDETERMINED_MIN_STEPS."""
    from types import SimpleNamespace

    from raysearch.evaluation import UNDETERMINED_MIN_STEPS, evaluate
    from raysearch.stability import EXACT_MAX_HIDDEN

    L, _, _ = _pair_model(0.5)
    W = np.zeros((9, 9))
    for b in range(4):
        W[2 * b : 2 * b + 2, 2 * b : 2 * b + 2] = L
    W[8, 8] = 0.5
    gp = np.array([1.2, 3.0] * 4 + [2.0])
    gm = np.array([3.0, 1.2] * 4 + [2.0])
    assert W.shape[0] > EXACT_MAX_HIDDEN
    assert check_stability(W, np.ones(9), gp, gm).verdict == "undetermined"
    assert check_stability(W, np.ones(9), gp, gm, exact_max_hidden=9).verdict == "stable"
    model = SimpleNamespace(
        weights_=W.astype(np.float32),
        fields_=np.zeros(9, np.float32),
        gamma_plus_=gp.astype(np.float32),
        gamma_minus_=gm.astype(np.float32),
        theta_plus_=np.zeros(9, np.float32),
        theta_minus_=np.zeros(9, np.float32),
        gamma_=np.ones(9, np.float32),
        visible="gaussian",
        penalty="l2l1",
        lam=0.0,
        backend="numpy",
    )
    X = np.random.default_rng(0).normal(size=(200, 9)).astype(np.float32)
    res = evaluate(
        model,
        SimpleNamespace(train=X[:150], test=X[150:]),
        n_chains=5,
        n_burnin=10,
        n_samples=2,
        n_between=5,
    )
    assert res.settings["stability"] == "undetermined" and not res.unstable
    assert res.settings["n_burnin"] + 2 * 5 == UNDETERMINED_MIN_STEPS


def test_trial_metrics_carry_the_reason(unstable_fit):
    """The search trial's metrics of a fit stopped as unstable: bad, unstable, and why."""
    from raysearch.search.trial import _evaluate

    m, X = unstable_fit
    from types import SimpleNamespace

    ds = SimpleNamespace(train=X[:400], test=X[400:])
    metrics, _ = _evaluate(
        m, ds, dict(n_chains=10, n_burnin=10, n_samples=2, n_between=2), 0, "numpy"
    )
    assert metrics["bad"] and metrics["unstable"]
    assert metrics["unstable_reason"] == m.diverged_reason_
    assert metrics["max_nrmse"] == np.inf


def test_marginal_negative_margins_are_undetermined_unless_asked():
    """margin = min(gp, gm) - ||w||^2 = -1e-4 on one unit (g = 2): chains would e-fold only about
    every 2e4 steps, so the default tolerance (1e-3 g) leaves it to sampling; rel_tol=0 does not."""
    W = np.array([[1.0, 1.0]])
    v = check_stability(W, np.ones(2), [2.0 - 1e-4], [3.0])
    assert v.verdict == "undetermined" and "marginally" in v.reason
    assert np.isclose(v.margin, -1e-4)
    assert check_stability(W, np.ones(2), [2.0 - 1e-4], [3.0], rel_tol=0).verdict == "unstable"
    assert check_stability(W, np.ones(2), [2.0 - 1e-2], [3.0]).verdict == "unstable"
