"""The CRBM estimator: reproducibility, resume, backends, divergence, validation."""

import numpy as np
import pytest

from raysearch.backend import get_backend
from raysearch.crbm import CRBM, training, units
from raysearch.errors import ConfigError, InputError

FITTED = (
    "weights_",
    "fields_",
    "gamma_plus_",
    "gamma_minus_",
    "theta_plus_",
    "theta_minus_",
    "hidden_var_",
)


def binary_data(T=200, N=30, seed=0):
    """Two planted groups of 6 units that switch on together, background rate 0.05."""
    rng = np.random.default_rng(seed)
    X = rng.random((T, N)) < 0.05
    for g in (slice(0, 6), slice(10, 16)):
        on = rng.random(T) < 0.2
        X[on, g] |= rng.random((on.sum(), 6)) < 0.8
    return X.astype(np.float32)


def small(**kw):
    base = dict(
        n_hidden=4, lam=0.01, n_updates=30, batch_size=20, n_gibbs=3, seed=3, backend="numpy"
    )
    base.update(kw)
    return CRBM(**base)


def fit_and_stop(model, X, at, ck, every):
    """Fit ``model`` on ``X``, save its checkpoint to ``ck`` at update ``at`` and stop there."""

    def stop(progress):
        if progress["updates"] == at:
            model.save_checkpoint(ck)
            return "stop"

    return model.fit(X, callback=stop, callback_every=every)


def assert_same_fit(a, b):
    for k in FITTED:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert a.n_updates_done_ == b.n_updates_done_


def test_fit_attributes_shapes_and_types():
    X = binary_data()
    m = small().fit(X)
    assert m.weights_.shape == (4, 30) and m.weights_.dtype == np.float32
    for k in ("gamma_plus_", "gamma_minus_", "theta_plus_", "theta_minus_", "hidden_var_"):
        assert getattr(m, k).shape == (4,) and isinstance(getattr(m, k), np.ndarray)
    assert m.fields_.shape == (30,)
    assert m.n_updates_done_ == 30 and m.diverged_ is False and m.fit_seconds_ > 0
    assert (m.n_visible_, m.n_hidden_) == (30, 4)
    assert np.all(m.weights_.sum(axis=1) >= 0)  # sign gauge applied
    assert np.all(m.gamma_plus_ >= training.GAMMA_MIN)
    # hidden_var_ is c_mu: mean over the training frames of Var(h | v)
    bk = get_backend("numpy")
    _, v = units.drelu_mean_var(
        X @ m.weights_.T, m.gamma_plus_, m.gamma_minus_, m.theta_plus_, m.theta_minus_, bk
    )
    np.testing.assert_allclose(m.hidden_var_, v.mean(axis=0), rtol=1e-5)
    H = m.transform(X[:5])
    assert H.shape == (5, 4)
    np.testing.assert_allclose(
        H,
        units.drelu_mean(
            X[:5] @ m.weights_.T, m.gamma_plus_, m.gamma_minus_, m.theta_plus_, m.theta_minus_, bk
        ),
        rtol=1e-6,
    )
    assert m.free_energy(X[:3]).shape == (3,)
    assert m.gibbs(X[:3], 2, rng=1).shape == (3, 30)
    assert m.sample_hiddens(X[:3], rng=1).shape == (3, 4)


def test_same_seed_same_weights_other_seed_other_weights():
    X = binary_data()
    a, b, c = small().fit(X), small().fit(X), small(seed=4).fit(X)
    assert_same_fit(a, b)
    assert not np.array_equal(a.weights_, c.weights_)


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    X = binary_data()
    full = small(n_updates=40).fit(X)
    ck = tmp_path / "ck.h5"
    first = fit_and_stop(small(n_updates=40), X, 15, ck, every=5)
    assert first.n_updates_done_ == 15
    resumed = small(n_updates=40).fit(X, resume_from=ck)
    assert_same_fit(full, resumed)


def test_periodic_checkpoint_file_resumes(tmp_path):
    X = binary_data()
    ck = tmp_path / "sub" / "periodic.h5"
    full = small(n_updates=20).fit(X, checkpoint=(ck, 10), callback_every=10)
    assert ck.exists() and not list(ck.parent.glob(".*tmp"))
    from raysearch.crbm.io import read_checkpoint

    st = read_checkpoint(ck)
    assert st["update"] == 20 and st["chains"].shape == (20, 30)
    assert set(st["moments"]) == set(st["params"])
    # a checkpoint from other settings is refused with a clear message
    with pytest.raises(ConfigError, match="lam"):
        small(n_updates=20, lam=0.5).fit(X, resume_from=ck)
    calls = []
    small(n_updates=20).fit(
        X,
        checkpoint=lambda model: calls.append(model.save_checkpoint(tmp_path / "cb.h5")),
        callback_every=10,
    )
    assert len(calls) == 2 and (tmp_path / "cb.h5").exists()
    assert full.n_updates_done_ == 20


def test_fit_on_strict_backend_matches_numpy(monkeypatch):
    """The whole fit on the CuPy-like stand-in: any host/device mixing would raise TypeError.

    The strict backend runs the generic array code (the code CuPy runs), so it is compared with
    NumPy running that same code: the compiled CPU kernels switched off."""
    monkeypatch.setenv("RAYSEARCH_CPU_KERNELS", "0")
    assert get_backend("numpy").cpu_kernels is None
    X = binary_data()
    seen = []
    a = small(backend="strict").fit(X, callback=seen.append, callback_every=10)
    b = small(backend="numpy").fit(X)
    assert_same_fit(a, b)
    assert [p["updates"] for p in seen] == [10, 20, 30]
    assert set(seen[0]) >= {"updates", "seconds", "health", "lr"}
    assert all(isinstance(p["health"], float) for p in seen)
    Xg = np.random.default_rng(0).standard_normal((100, 12)).astype(np.float32)
    g1 = small(backend="strict", visible="gaussian").fit(Xg)
    g2 = small(backend="numpy", visible="gaussian").fit(Xg)
    assert_same_fit(g1, g2)
    np.testing.assert_array_equal(g1.gamma_, g2.gamma_)


def test_gradients_agree_across_backends(backend):
    """Deterministic part of an update on every backend vs NumPy (float32 tolerance)."""
    X = binary_data()
    np_bk = get_backend("numpy")
    mom = training.data_moments(X, "bernoulli")
    p = training.init_params(mom, 4, "bernoulli", 0)
    p["weights"] = p["weights"] * 30
    cfg = training.TrainConfig(
        visible="bernoulli", penalty="l2l1", lam=0.02, n_gibbs=1, learning_rate=1e-2, n_updates=10
    )
    ref, ref_var = training.gradients(p, X[:50], X[50:90], mom, cfg, np_bk)
    dp = {k: backend.asarray(v) for k, v in p.items()}
    got, got_var = training.gradients(
        dp,
        backend.asarray(X[:50]),
        backend.asarray(X[50:90]),
        {k: backend.asarray(v) for k, v in mom.items()},
        cfg,
        backend,
    )
    for k in ref:
        np.testing.assert_allclose(backend.to_numpy(got[k]), ref[k], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(got_var), ref_var, rtol=1e-4, atol=1e-6)
    m = small(backend=backend.name).fit(X)  # a whole fit runs on it
    assert not m.diverged_ and np.all(np.isfinite(m.weights_))


def test_divergence_is_an_outcome_not_an_exception():
    X = binary_data()
    m = small(learning_rate=1e30, n_updates=100).fit(X, callback_every=10)
    assert m.diverged_ is True
    assert m.n_updates_done_ < 100
    assert not np.all(np.isfinite(m.weights_))


def test_callback_can_stop():
    X = binary_data()
    m = small(n_updates=100).fit(
        X, callback=lambda p: "stop" if p["updates"] >= 20 else None, callback_every=10
    )
    assert m.n_updates_done_ == 20 and not m.diverged_


def test_gaussian_visible_finds_planted_factor():
    rng = np.random.default_rng(0)
    a = np.zeros(20, np.float32)
    a[:5] = 1.0
    z = rng.standard_normal(2000).astype(np.float32)
    X = (np.outer(z, a) + 0.5 * rng.standard_normal((2000, 20))).astype(np.float32)
    X = (X - X.mean(0)) / X.std(0)
    m = CRBM(
        n_hidden=2,
        visible="gaussian",
        lam=0.001,
        n_updates=600,
        batch_size=50,
        n_gibbs=3,
        seed=0,
        backend="numpy",
    ).fit(X)
    assert m.gamma_.shape == (20,) and not m.diverged_
    cos = np.abs(m.weights_ @ a) / (np.linalg.norm(m.weights_, axis=1) * np.linalg.norm(a))
    assert cos.max() > 0.9


X_OK = binary_data()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lam=-0.1), "lam"),
        (dict(lam=float("nan")), "lam"),
        (dict(n_hidden=0), "n_hidden"),
        (dict(n_hidden=2.5), "n_hidden"),
        (dict(visible="potts"), "unknown visible"),
        (dict(penalty="l3"), "unknown penalty"),
        (dict(batch_size=500), "larger than the 200 training frames"),
        (dict(n_updates=0), "n_updates"),
        (dict(n_gibbs=0), "n_gibbs"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(lr_final_ratio=0.0), "lr_final_ratio"),
        (dict(decay_after=1.5), "decay_after"),
        (dict(beta2=1.0), "beta2"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(seed=-1), "seed"),
        (dict(n_chains=0), "n_chains"),
        (dict(n_jobs=0), "n_jobs"),
        (dict(n_jobs=30, batch_size=20), "more chain threads"),
        (dict(backend="tpu"), "unknown backend"),
    ],
)
def test_invalid_settings_raise_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        small(**kw).fit(X_OK)


def test_invalid_data_raises_input_error():
    with pytest.raises(InputError, match="0/1 data"):
        small().fit(X_OK + 0.5)
    bad = X_OK.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        small().fit(bad)
    with pytest.raises(InputError, match="2-D"):
        small().fit(X_OK[0])

    class FakeDataset:
        train = X_OK
        visible = "gaussian"

    with pytest.raises(ConfigError, match="visible='gaussian'"):
        small().fit(FakeDataset())
    with pytest.raises(ConfigError, match="not fitted"):
        small().transform(X_OK)


def test_other_chain_count_and_fit_options():
    m = small(n_chains=7).fit(X_OK)
    assert m._state["chains"].shape == (7, 30) and not m.diverged_
    with pytest.raises(ConfigError, match="callback_every"):
        small().fit(X_OK, callback_every=0)
    with pytest.raises(ConfigError, match="checkpoint"):
        small().fit(X_OK, checkpoint="just-a-path.h5")
    with pytest.raises(ConfigError, match="no training state"):
        small().save_checkpoint("x.h5")


def test_parallel_chain_groups_are_reproducible(tmp_path, monkeypatch):
    """n_jobs=2: threads on NumPy, sequential groups on the strict backend, same numbers (generic
    code path); with the compiled CPU kernels, threaded fits repeat exactly; a resumed fit equals
    an uninterrupted one; the setting is part of the result, like the seed."""
    X = binary_data()
    with monkeypatch.context() as m:
        m.setenv("RAYSEARCH_CPU_KERNELS", "0")
        assert_same_fit(small(n_jobs=2).fit(X), small(n_jobs=2, backend="strict").fit(X))
    assert get_backend("numpy").cpu_kernels is not None
    a = small(n_jobs=2).fit(X)
    assert_same_fit(a, small(n_jobs=2).fit(X))
    assert not np.array_equal(a.weights_, small().fit(X).weights_)
    ck = tmp_path / "ck.h5"
    fit_and_stop(small(n_jobs=2), X, 10, ck, every=10)
    assert_same_fit(a, small(n_jobs=2).fit(X, resume_from=ck))
    with pytest.raises(ConfigError, match="n_jobs"):
        small(n_jobs=1).fit(X, resume_from=ck)


def test_advance_chains_executor_is_transparent():
    from concurrent.futures import ThreadPoolExecutor

    bk = get_backend("numpy")
    X = binary_data()
    mom = training.data_moments(X, "bernoulli")
    p = training.init_params(mom, 4, "bernoulli", 0)
    p["weights"] = p["weights"] * 20
    ch = training.init_chains(mom, 21, "bernoulli", 0)
    cfg = training.TrainConfig(
        visible="bernoulli",
        penalty="l1",
        lam=0.0,
        n_gibbs=4,
        learning_rate=1e-3,
        n_updates=10,
        n_groups=3,
    )
    seq = training.advance_chains(p, ch, 5, cfg, bk)
    with ThreadPoolExecutor(3) as ex:
        par = training.advance_chains(p, ch, 5, cfg, bk, ex)
    np.testing.assert_array_equal(seq, par)
    assert seq.shape == (21, 30)
    # group g uses stream (seed, STREAM_GIBBS, update, g): the first group is reproducible alone
    alone = training.gibbs(p, ch[:7], 4, "bernoulli", bk, bk.rng(0, training.STREAM_GIBBS, 5, 0))
    np.testing.assert_array_equal(seq[:7], alone)
