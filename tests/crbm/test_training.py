"""Known-answer tests of the PCD building blocks (raysearch.crbm.training).

The reference is a tiny bernoulli-dReLU model whose log-likelihood is computed exactly by
enumerating all 2^N visible configurations (Gamma from raysearch.crbm.units).
"""

import itertools
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from raysearch.backend import get_backend
from raysearch.crbm import training, units

BK = get_backend("numpy")
N, M = 6, 2
KEYS = ("weights", "fields", "gamma_plus", "gamma_minus", "theta_plus", "theta_minus")


def tiny_params(seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    p = {
        "weights": rng.normal(0.0, 0.7, (M, N)),
        "fields": rng.normal(-0.8, 0.5, N),
        "gamma_plus": rng.uniform(0.6, 2.0, M),
        "gamma_minus": rng.uniform(0.6, 2.0, M),
        "theta_plus": rng.normal(0.0, 0.5, M),
        "theta_minus": rng.normal(0.0, 0.5, M),
    }
    return {k: v.astype(dtype) for k, v in p.items()}


ALL_V = np.array(list(itertools.product([0.0, 1.0], repeat=N)))


def tiny_data(seed=2, T=40):
    return (np.random.default_rng(seed).random((T, N)) < 0.35).astype(np.float64)


def log_unnorm(p, V):
    """log P*(v) = g.v + sum_mu Gamma_mu(I_mu(v))."""
    I = V @ p["weights"].T
    return V @ p["fields"] + units.drelu_cgf(I, *training._hidden(p), BK).sum(axis=1)


def exact_ll(p, D):
    return log_unnorm(p, D).mean() - logsumexp(log_unnorm(p, ALL_V))


def model_probs(p):
    lu = log_unnorm(p, ALL_V)
    return np.exp(lu - logsumexp(lu))


def per_sample_stats(p, V):
    """Per-configuration sufficient statistics whose averages give every gradient term."""
    I = V @ p["weights"].T
    ep, ep2, em, em2 = units.drelu_branch_moments(I, *training._hidden(p), BK)
    h = ep + em
    return {
        "weights": h[:, :, None] * V[:, None, :],
        "fields": V,
        "gamma_plus": -0.5 * ep2,
        "gamma_minus": -0.5 * em2,
        "theta_plus": -ep,
        "theta_minus": em,
    }


def exact_gradient(p, D):
    """<s>_data - <s>_model with the model expectation by enumeration."""
    pd = per_sample_stats(p, D)
    pm = per_sample_stats(p, ALL_V)
    P = model_probs(p)
    return {k: pd[k].mean(axis=0) - np.tensordot(P, pm[k], axes=(0, 0)) for k in KEYS}


def test_exact_gradient_matches_finite_differences():
    p, D = tiny_params(), tiny_data()
    g = exact_gradient(p, D)
    eps = 1e-5
    for k in KEYS:
        flat = p[k].ravel()
        for j in range(flat.size):
            q = {kk: vv.copy() for kk, vv in p.items()}
            q[k].ravel()[j] += eps
            up = exact_ll(q, D)
            q[k].ravel()[j] -= 2 * eps
            down = exact_ll(q, D)
            fd = (up - down) / (2 * eps)
            assert g[k].ravel()[j] == pytest.approx(fd, abs=2e-6, rel=1e-4), (k, j)


def _config(**kw):
    base = dict(
        visible="bernoulli", penalty="l1", lam=0.0, n_gibbs=1, learning_rate=1e-3, n_updates=10
    )
    base.update(kw)
    return training.TrainConfig(**base)


def _check_within(est, exact, samples, p, n_sigma=5.0):
    """Every gradient entry within n_sigma standard errors of the exact value (+ float32 slack)."""
    stats = per_sample_stats(p, samples)
    for k in KEYS:
        se = stats[k].std(axis=0) / math.sqrt(samples.shape[0])
        err = np.abs(np.asarray(est[k], dtype=np.float64) - exact[k])
        assert np.all(err <= n_sigma * se + 1e-5), (k, np.max(err / (se + 1e-12)))


def test_estimator_with_exact_negative_samples_is_unbiased():
    p, D = tiny_params(), tiny_data()
    exact = exact_gradient(p, D)
    rng = np.random.default_rng(3)
    S = ALL_V[rng.choice(len(ALL_V), size=40_000, p=model_probs(p))]
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    est, _ = training.gradients(
        p32,
        D.astype(np.float32),
        S.astype(np.float32),
        {"mean": D.mean(axis=0).astype(np.float32)},
        _config(),
        BK,
    )
    _check_within(est, exact, S, p)


def test_estimator_with_mixed_gibbs_chains_is_unbiased():
    """Persistent-chain negative phase: many chains, well mixed by the module's own Gibbs sampler."""
    p, D = tiny_params(), tiny_data()
    exact = exact_gradient(p, D)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    V0 = (np.random.default_rng(4).random((40_000, N)) < 0.5).astype(np.float32)
    chains = training.gibbs(p32, V0, 30, "bernoulli", BK, BK.rng(5, 0))
    est, _ = training.gradients(
        p32,
        D.astype(np.float32),
        chains,
        {"mean": D.mean(axis=0).astype(np.float32)},
        _config(),
        BK,
    )
    _check_within(est, exact, chains.astype(np.float64), p)


def test_var_h_on_data_is_total_variance():
    p, D = tiny_params(), tiny_data()
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    _, var_h = training.gradients(
        p32,
        D.astype(np.float32),
        D.astype(np.float32),
        {"mean": D.mean(axis=0).astype(np.float32)},
        _config(),
        BK,
    )
    m, v = units.drelu_mean_var(D @ p["weights"].T, *training._hidden(p), BK)
    np.testing.assert_allclose(var_h, m.var(axis=0) + v.mean(axis=0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("penalty", ["l1", "l2l1"])
def test_penalty_gradient_matches_finite_differences(penalty):
    W = np.random.default_rng(6).normal(0, 1, (3, 5))
    lam = 0.07
    g = training.penalty_gradient(W, penalty, lam, BK)
    eps = 1e-6
    for idx in np.ndindex(W.shape):
        Wp, Wm = W.copy(), W.copy()
        Wp[idx] += eps
        Wm[idx] -= eps
        fd = (
            training.penalty_value(Wp, penalty, lam, BK)
            - training.penalty_value(Wm, penalty, lam, BK)
        ) / (2 * eps)
        assert g[idx] == pytest.approx(fd, rel=1e-6, abs=1e-9)
    if penalty == "l2l1":  # the documented closed form
        np.testing.assert_allclose(g, lam * np.sign(W) * np.abs(W).sum(axis=1, keepdims=True))
    else:
        np.testing.assert_allclose(g, lam * np.sign(W))


def _data_variance(p, D):
    """Var(h_mu) on the rows of D, float64, straight from units (the quantity normalised to 1)."""
    m, v = units.drelu_mean_var(D @ p["weights"].T, *training._hidden(p), BK)
    return m.var(axis=0) + v.mean(axis=0)


@pytest.mark.parametrize("penalty", ["l1", "l2l1"])
def test_penalty_enters_through_the_normalisation(penalty):
    """The penalty's share of the gradient is lam grad R + nu grad Var(h) with
    nu_mu = lam ||w_mu||_1^k / (2 Var(h_mu)): checked against the closed-form penalty gradient and
    finite differences of Var on the data (was: lam grad R alone, before the normalisation term
    made the fixed points the reference's)."""
    p = {k: v.astype(np.float32) for k, v in tiny_params().items()}
    D = tiny_data().astype(np.float32)
    mom = {"mean": D.mean(axis=0)}
    lam = 0.3
    g0, var0 = training.gradients(p, D, D[:7], mom, _config(lam=0.0), BK)
    g1, var1 = training.gradients(p, D, D[:7], mom, _config(lam=lam, penalty=penalty), BK)
    np.testing.assert_array_equal(var0, var1)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    D64 = D.astype(np.float64)
    var = _data_variance(p64, D64)
    np.testing.assert_allclose(var1, var, rtol=1e-4)
    a = np.abs(p64["weights"]).sum(axis=1)
    nu = lam * a ** (1 if penalty == "l1" else 2) / (2 * var)
    eps = 1e-6
    for k in ("weights", "gamma_plus", "gamma_minus", "theta_plus", "theta_minus"):
        for idx in np.ndindex(p64[k].shape):
            q = {kk: vv.copy() for kk, vv in p64.items()}
            q[k][idx] += eps
            up = _data_variance(q, D64)
            q[k][idx] -= 2 * eps
            dvar = (up - _data_variance(q, D64)) / (2 * eps)
            want = nu @ dvar
            if k == "weights":
                want += training.penalty_gradient(p64["weights"], penalty, lam, BK)[idx]
            got = float(g0[k][idx]) - float(g1[k][idx])
            assert got == pytest.approx(want, rel=2e-4, abs=2e-5), (k, idx)
    # the penalty's share has no component along any unit's scale-gauge orbit
    for mu in range(M):
        d = {k: np.asarray(g0[k], np.float64) - np.asarray(g1[k], np.float64) for k in g0}
        t = (
            d["weights"][mu] @ p64["weights"][mu]
            + 2 * d["gamma_plus"][mu] * p64["gamma_plus"][mu]
            + 2 * d["gamma_minus"][mu] * p64["gamma_minus"][mu]
            + d["theta_plus"][mu] * p64["theta_plus"][mu]
            + d["theta_minus"][mu] * p64["theta_minus"][mu]
        )
        assert abs(t) < 1e-4 * lam * a[mu] ** 2, (mu, t)


def test_variance_gradient_matches_finite_differences():
    p, D = tiny_params(), tiny_data()
    I = D @ p["weights"].T
    ep, ep2, em, em2 = units.drelu_branch_moments(I, *training._hidden(p), BK)
    Dv, dhid = training.variance_gradient(I, ep, ep2, em, em2, p, BK)
    dW = Dv.T @ D / D.shape[0]
    eps = 1e-6
    for k in ("weights", "gamma_plus", "gamma_minus", "theta_plus", "theta_minus"):
        for idx in np.ndindex(p[k].shape):
            q = {kk: vv.copy() for kk, vv in p.items()}
            q[k][idx] += eps
            up = _data_variance(q, D)
            q[k][idx] -= 2 * eps
            fd = (up - _data_variance(q, D)) / (2 * eps)
            got = dW[idx] if k == "weights" else dhid[k][idx]
            assert got == pytest.approx(fd[idx[0]], rel=1e-6, abs=1e-8), (k, idx)
            assert abs(fd[1 - idx[0]]) < 1e-9  # a unit's parameters move only its Var


def test_weighted_negative_phase_is_the_exact_expectation():
    """neg_weights = P(v) over all 2^N states gives the exact gradient."""
    p, D = tiny_params(), tiny_data()
    exact = exact_gradient(p, D)
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    got, _ = training.gradients(
        p32,
        D.astype(np.float32),
        ALL_V.astype(np.float32),
        {"mean": D.mean(axis=0).astype(np.float32)},
        _config(),
        BK,
        neg_weights=model_probs(p).astype(np.float32),
    )
    for k in KEYS:
        np.testing.assert_allclose(got[k], exact[k], rtol=1e-4, atol=2e-6, err_msg=k)


def _reference_coords(p):
    """(gamma, eta, theta, delta) of the reference's dReLU parameterisation, float64."""
    gp, gm, tp, tm = (np.asarray(p[k], np.float64) for k in training.HIDDEN_KEYS)
    gamma = 2.0 / (1.0 / gp + 1.0 / gm)
    eta = (gm - gp) / (gm + gp)
    delta = (tp + tm) / (1.0 / np.sqrt(1 + eta) + 1.0 / np.sqrt(1 - eta))
    return gamma, eta, tp - delta / np.sqrt(1 + eta), delta


def test_bounds_clip_eta_and_the_jump_like_the_reference():
    p = {
        "weights": np.ones((4, 3), np.float32),
        "gamma_plus": np.array([1.0, 0.1, 2.0, 1.0], np.float32),
        "gamma_minus": np.array([1.2, 8.0, 2.0, 1.0], np.float32),  # eta = 0.09, 0.975, 0, 0
        "theta_plus": np.array([0.3, 0.5, -30.0, -1.0], np.float32),
        "theta_minus": np.array([0.1, -0.2, -20.0, -2.0], np.float32),
    }
    q = training.bound_hidden(p, BK)
    g0, e0, t0, d0 = _reference_coords(p)
    g1, e1, t1, d1 = _reference_coords(q)
    # unit 0: within both bounds, untouched bit for bit; unit 3: jump 3 < 20, untouched
    for k in training.HIDDEN_KEYS:
        assert q[k][0] == p[k][0] and q[k][3] == p[k][3], k
    # unit 1: eta clipped to 0.95 (gm/gp = 39), gamma, theta, delta held
    assert e1[1] == pytest.approx(0.95, abs=1e-6)
    assert q["gamma_minus"][1] / q["gamma_plus"][1] == pytest.approx(39.0, rel=1e-5)
    np.testing.assert_allclose([g1[1], t1[1], d1[1]], [g0[1], t0[1], d0[1]], rtol=1e-5, atol=1e-6)
    # unit 2: eta = 0, jump -(tp + tm)/gamma = 25 > 20: gamma raised to 50/20, thresholds held
    assert q["gamma_plus"][2] == pytest.approx(2.5, rel=1e-6)
    assert q["gamma_minus"][2] == pytest.approx(2.5, rel=1e-6)
    assert q["theta_plus"][2] == p["theta_plus"][2] and q["theta_minus"][2] == p["theta_minus"][2]
    # the constraints apply them
    r = training.apply_constraints(p, BK)
    for k in training.HIDDEN_KEYS:
        np.testing.assert_array_equal(
            r[k],
            np.maximum(q[k], np.float32(training.GAMMA_MIN)) if k.startswith("gamma") else q[k],
        )


def test_learning_rate_schedule():
    lr = training.learning_rate
    assert lr(0, 100, 1e-2) == 1e-2
    assert lr(49, 100, 1e-2) == 1e-2
    assert lr(50, 100, 1e-2) == pytest.approx(1e-2)  # decay starts at 1.0
    assert lr(99, 100, 1e-2) == pytest.approx(1e-4)  # lr_final_ratio * lr at the last update
    assert lr(99, 100, 1e-2, lr_final_ratio=0.5) == pytest.approx(5e-3)
    # geometric: the midpoint of the decay phase is the geometric mean
    assert lr(1500, 2001, 1.0, 0.01, 0.5) == pytest.approx(0.1, rel=1e-12)
    seq = [lr(t, 1000, 1.0, 0.01, 0.25) for t in range(1000)]
    assert all(a >= b for a, b in zip(seq, seq[1:]))
    assert seq[249] == 1.0 and seq[251] < 1.0
    assert lr(0, 1, 3e-3) == 3e-3 and lr(5, 10, 1.0, 0.01, 1.0) == 1.0


def test_rmsprop_first_step_and_clipping():
    p = {"a": np.array([1.0, 2.0, 3.0], np.float32)}
    m = {"a": np.zeros(3, np.float32)}
    g = {"a": np.array([0.5, -7.0, 0.0], np.float32)}
    newp, newm = training.rmsprop_step(p, m, g, lr=0.1, t=1, beta2=0.999, epsilon=1e-6, bk=BK)
    # bias-corrected second moment at t=1 is g^2, so the step is lr * g / (eps + |g|)
    np.testing.assert_allclose(newp["a"], [1.1, 1.9, 3.0], rtol=1e-5)
    np.testing.assert_allclose(newm["a"], [0.001 * 0.25, 0.001 * 1.0, 0.0], rtol=1e-5)
    assert p["a"][0] == 1.0 and m["a"][0] == 0.0  # inputs untouched


def test_scale_gauge_and_sign_gauge_leave_p_of_v_unchanged():
    p = {k: v.astype(np.float32) for k, v in tiny_params().items()}
    lu = log_unnorm(p, ALL_V)
    mom = {k: np.ones_like(v) for k, v in p.items()}
    q, qm = training.rescale_hidden(p, mom, np.array([1.3, 0.8], np.float32), BK)
    lq = log_unnorm(q, ALL_V)
    # Gamma shifts by a constant (log s) per unit: log-probabilities differences are invariant
    np.testing.assert_allclose(lq - lq[0], lu - lu[0], atol=2e-5)
    np.testing.assert_allclose(
        qm["weights"],
        1 / 1.3 * np.ones((N,)) * np.array([[1.0], [0.0]]) + 1 / 0.8 * np.array([[0.0], [1.0]]),
        rtol=1e-6,
    )
    p["weights"][0] = -np.abs(p["weights"][0])
    lu = log_unnorm(p, ALL_V)
    s = training.sign_gauge(p, BK)
    assert np.all(s["weights"].sum(axis=1) >= 0)
    np.testing.assert_array_equal(s["gamma_plus"][0], p["gamma_minus"][0])
    np.testing.assert_array_equal(s["theta_minus"][0], p["theta_plus"][0])
    np.testing.assert_allclose(log_unnorm(s, ALL_V), lu, atol=2e-5)


def test_mean_centring_keeps_inputs_relative_to_thresholds():
    p = {k: v.astype(np.float32) for k, v in tiny_params().items()}
    mean = tiny_data().mean(axis=0).astype(np.float32)
    q = dict(p, weights=p["weights"] + 0.1)
    c = training.centre_thresholds(q, p["weights"], mean, BK)
    np.testing.assert_allclose(
        c["theta_plus"] - q["weights"] @ mean, p["theta_plus"] - p["weights"] @ mean, atol=1e-6
    )
    np.testing.assert_allclose(
        c["theta_minus"] + q["weights"] @ mean, p["theta_minus"] + p["weights"] @ mean, atol=1e-6
    )


def test_pcd_update_is_pure_and_float32():
    X = (np.random.default_rng(0).random((50, N)) < 0.3).astype(np.float32)
    mom = training.data_moments(X, "bernoulli")
    p = training.init_params(mom, M, "bernoulli", 0)
    m = training.init_moments(p, BK)
    ch = training.init_chains(mom, 10, "bernoulli", 0)
    before = {k: v.copy() for k, v in p.items()}
    cfg = _config(lam=0.01, penalty="l2l1", n_gibbs=3, learning_rate=0.01)
    p2, m2, ch2 = training.pcd_update(p, m, ch, X[:10], mom, 0, cfg, BK)
    for k in p:
        np.testing.assert_array_equal(p[k], before[k])
        assert p2[k].dtype == np.float32 and m2[k].dtype == np.float32
    assert ch2.dtype == np.float32 and set(np.unique(ch2)) <= {0.0, 1.0}
    p3, _, ch3 = training.pcd_update(p, m, ch, X[:10], mom, 0, cfg, BK)
    for k in p:
        np.testing.assert_array_equal(p2[k], p3[k])
    np.testing.assert_array_equal(ch2, ch3)


def _composed_update(params, moments, chains, batch, mom, update, cfg, bk, executor=None):
    """One update as the plain composition of the building blocks (the slow, obvious version of
    pcd_update: whole arrays, no chunks)."""
    WT = training.weights_t(params, bk)
    chains = training.advance_chains(params, chains, update, cfg, bk, executor, WT)
    grads, var_h = training.gradients(params, batch, chains, mom, cfg, bk, WT, executor)
    lr = training.learning_rate(
        update, cfg.n_updates, cfg.learning_rate, cfg.lr_final_ratio, cfg.decay_after
    )
    p, m = training.rmsprop_step(params, moments, grads, lr, update + 1, cfg.beta2, cfg.epsilon, bk)
    p = training.centre_thresholds(p, params["weights"], mom["mean"], bk)
    s2 = training.normalisation_scale(var_h, 0.25 * lr / cfg.learning_rate, bk)
    p, m = training.rescale_hidden(p, m, s2, bk)
    return training.apply_constraints(p, bk), m, chains


@pytest.mark.parametrize(
    "penalty, n_jobs, visible",
    [("l2l1", 1, "bernoulli"), ("l2l1", 3, "bernoulli"), ("l1", 2, "gaussian")],
)
def test_pcd_update_equals_composition_of_building_blocks(monkeypatch, penalty, n_jobs, visible):
    """pcd_update does the weights in cache-sized row chunks, split between threads: the same
    arithmetic as the whole-array building blocks, so the same numbers (a few float32 ulps at
    most, from the row-chunked matrix-vector product of the centring)."""
    from concurrent.futures import ThreadPoolExecutor

    Nv, Mh = 300, 23
    rng = np.random.default_rng(5)
    if visible == "bernoulli":
        X = (rng.random((120, Nv)) < 0.1).astype(np.float32)
    else:
        X = rng.normal(0.3, 1.2, (120, Nv)).astype(np.float32)
    mom = training.data_moments(X, visible)
    p = training.init_params(mom, Mh, visible, 3)
    p["weights"] *= 8.0  # weights large enough for the penalty to matter
    m = training.init_moments(p, BK)
    m = {k: v + np.float32(1e-4) for k, v in m.items()}
    ch = training.init_chains(mom, 12, visible, 3)
    cfg = _config(
        lam=0.02, penalty=penalty, n_gibbs=2, learning_rate=0.01, visible=visible, n_groups=n_jobs
    )
    # 4 rows per chunk: 6 chunks of 23 rows, the last one short
    monkeypatch.setattr(training, "WEIGHT_CHUNK_BYTES", 4 * 4 * Nv)
    assert len(training.weight_chunks(Mh, Nv, BK)) == 6
    with ThreadPoolExecutor(n_jobs) as ex:
        got = training.pcd_update(p, m, ch, X[:12], mom, 7, cfg, BK, ex)
        ref = _composed_update(p, m, ch, X[:12], mom, 7, cfg, BK, ex)
    for g, r in zip(got[:2], ref[:2]):
        assert list(g) == list(r)
        for k in g:
            assert g[k].dtype == np.float32
            np.testing.assert_allclose(g[k], r[k], rtol=2e-6, atol=1e-8, err_msg=k)
    np.testing.assert_array_equal(got[2], ref[2])
    # and the update did something: every parameter moved
    for k in p:
        assert not np.array_equal(got[0][k], p[k]), k


def test_initialisation():
    X = (np.random.default_rng(0).random((400, 500)) < 0.1).astype(np.float32)
    mom = training.data_moments(X, "bernoulli")
    p = training.init_params(mom, 20, "bernoulli", 7)
    assert p["weights"].shape == (20, 500)
    assert np.std(p["weights"]) == pytest.approx(math.sqrt(0.1 / 500), rel=0.05)
    np.testing.assert_allclose(1 / (1 + np.exp(-p["fields"])), mom["mean"], atol=1e-5)
    assert np.all(p["gamma_plus"] == 1) and np.all(p["theta_minus"] == 0)
    ch = training.init_chains(mom, 1000, "bernoulli", 7)
    assert abs(ch.mean() - X.mean()) < 0.005
    Xg = np.random.default_rng(1).normal(2.0, 3.0, (4000, 5)).astype(np.float32)
    mg = training.data_moments(Xg, "gaussian")
    pg = training.init_params(mg, 3, "gaussian", 0)
    np.testing.assert_allclose(pg["fields"] / pg["visible_gamma"], Xg.mean(axis=0), rtol=1e-4)
    np.testing.assert_allclose(1 / pg["visible_gamma"], Xg.var(axis=0), rtol=1e-3)


def test_batch_indices_cover_each_epoch_once():
    seen = np.concatenate([training.batch_indices(u, 103, 10, 0) for u in range(10)])
    assert len(np.unique(seen)) == 100
    np.testing.assert_array_equal(
        training.batch_indices(12, 103, 10, 0), training.batch_indices(12, 103, 10, 0)
    )
    assert not np.array_equal(
        training.batch_indices(0, 103, 10, 0), training.batch_indices(10, 103, 10, 0)
    )


def test_minibatches_follow_batch_indices(backend):
    X = np.arange(103 * 2, dtype=np.float32).reshape(103, 2)
    got = [
        (u, backend.to_numpy(b))
        for u, b in training.minibatches(backend.asarray(X), 7, 25, 10, 3, backend)
    ]
    assert [u for u, _ in got] == list(range(7, 25))
    for u, b in got:
        np.testing.assert_array_equal(b, X[training.batch_indices(u, 103, 10, 3)])
