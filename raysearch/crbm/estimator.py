"""The :class:`CRBM` estimator (scikit-learn shape) around the PCD functions of ``training``."""

from __future__ import annotations

import contextlib
import math
import numbers
import time

import numpy as np
from sklearn.base import BaseEstimator

from raysearch.crbm import training, units
from raysearch.errors import ConfigError, InputError

VISIBLE_TYPES = ("bernoulli", "gaussian")
PENALTIES = ("l1", "l2l1")
DEFAULT_LR = {"bernoulli": 5e-3, "gaussian": 1e-3}
PARAM_ATTRS = {  # training-state key -> fitted attribute
    "weights": "weights_",
    "fields": "fields_",
    "gamma_plus": "gamma_plus_",
    "gamma_minus": "gamma_minus_",
    "theta_plus": "theta_plus_",
    "theta_minus": "theta_minus_",
    "visible_gamma": "gamma_",
}


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(float(x))


def _unstable_reason(params, bk):
    """ "unstable: ..." when the training-state parameters of a gaussian cRBM are not normalisable
    (:func:`raysearch.stability.check_stability`; one M x M eigenproblem, plus a witness search
    of O(M^2) steps when the eigenvalue bound fails), else "". Called at K-update boundaries."""
    from raysearch.stability import check_stability

    v = check_stability(
        *(bk.to_numpy(params[k]) for k in ("weights", "visible_gamma", "gamma_plus", "gamma_minus"))
    )
    return f"unstable: {v.reason}" if v.verdict == "unstable" else ""


class CRBM(BaseEstimator):
    """Compositional RBM: bernoulli or gaussian visible units, dReLU hidden units (docs/model.md §1-3).

    Parameters
    ----------
    n_hidden : int, default 50
        Number of hidden units M (>= 1).
    visible : {"bernoulli", "gaussian"}
        Visible unit type: 0/1 data (binarised spikes) or real data (z-scored activity).
    penalty : {"l2l1", "l1"}
        Sparsity penalty on the weights (docs/model.md §3).
    lam : float, default 0.05
        Penalty strength (>= 0); not divided by N or by the batch size.
    n_updates : int, default 2000
        Training budget in gradient updates.
    batch_size : int, default 100
        Frames per minibatch (<= training frames).
    n_chains : int or None
        Persistent chains; None means ``batch_size``.
    n_gibbs : int, default 15
        Block-Gibbs steps of the chains per update.
    learning_rate : float or None
        Initial rate; None means 5e-3 (bernoulli) or 1e-3 (gaussian).
    lr_final_ratio : float, default 0.01
        Final rate / initial rate, in (0, 1].
    decay_after : float, default 0.5
        Fraction of the updates at the initial rate, in [0, 1].
    beta2, epsilon : float
        RMSprop second-moment rate in [0, 1) and denominator offset > 0.
    seed : int
        Every random draw derives from it: (seed, config) reproduces a fit on the same backend.
    backend : {"auto", "numpy", "cupy", "strict"}
        Array backend (:func:`raysearch.backend.get_backend`).
    n_jobs : int, default 1
        Threads that advance the persistent chains in parallel on the NumPy backend: the chains are
        split into ``n_jobs`` groups with their own random streams, and BLAS is limited to one
        thread per group during ``fit``. The result depends on ``n_jobs`` as on the seed (the
        "strict" backend runs the same groups one after the other and gives the same numbers). Use
        1 on a GPU and in Ray trials with one CPU; on a machine of your own, the number of cores.

    Attributes
    ----------
    weights_ : ndarray (n_hidden, n_visible) float32
    fields_ : ndarray (n_visible,)
    gamma_plus_, gamma_minus_, theta_plus_, theta_minus_ : ndarray (n_hidden,)
    gamma_ : ndarray (n_visible,) (gaussian visible units only)
    hidden_var_ : ndarray (n_hidden,)
        c_mu, the mean over training frames of Var(h_mu | v).
    n_updates_done_ : int
    diverged_ : bool
        True when the parameters became non-finite or (gaussian visibles) the model stopped being
        normalisable (:func:`raysearch.stability.check_stability` says "unstable" at a K-update
        boundary); the fit then stopped early.
    diverged_reason_ : str
        Why (empty when not diverged): "non-finite parameters" or "unstable: <the check's reason>".
    fit_seconds_ : float
    n_visible_, n_hidden_ : int
    """

    def __init__(
        self,
        n_hidden=50,
        visible="bernoulli",
        penalty="l2l1",
        lam=0.05,
        n_updates=2000,
        batch_size=100,
        n_chains=None,
        n_gibbs=15,
        learning_rate=None,
        lr_final_ratio=0.01,
        decay_after=0.5,
        beta2=0.999,
        epsilon=1e-6,
        seed=0,
        backend="auto",
        n_jobs=1,
    ):
        self.n_hidden = n_hidden
        self.visible = visible
        self.penalty = penalty
        self.lam = lam
        self.n_updates = n_updates
        self.batch_size = batch_size
        self.n_chains = n_chains
        self.n_gibbs = n_gibbs
        self.learning_rate = learning_rate
        self.lr_final_ratio = lr_final_ratio
        self.decay_after = decay_after
        self.beta2 = beta2
        self.epsilon = epsilon
        self.seed = seed
        self.backend = backend
        self.n_jobs = n_jobs

    # ---------------------------------------------------------------- validation
    def _check_settings(self):
        def bad(name, why):
            raise ConfigError(f"CRBM setting {name}={getattr(self, name)!r} is invalid: {why}")

        if not _is_int(self.n_hidden) or self.n_hidden < 1:
            bad("n_hidden", "the number of hidden units must be an integer >= 1")
        if self.visible not in VISIBLE_TYPES:
            bad("visible", f"unknown visible unit type; use one of {', '.join(VISIBLE_TYPES)}")
        if self.penalty not in PENALTIES:
            bad("penalty", f"unknown penalty; use one of {', '.join(PENALTIES)}")
        if not _is_real(self.lam) or self.lam < 0:
            bad("lam", "the penalty strength lambda must be a finite number >= 0")
        if not _is_int(self.n_updates) or self.n_updates < 1:
            bad("n_updates", "the number of updates must be an integer >= 1")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            bad("batch_size", "the batch size must be an integer >= 1")
        if self.n_chains is not None and (not _is_int(self.n_chains) or self.n_chains < 1):
            bad("n_chains", "the number of chains must be an integer >= 1 (or None = batch_size)")
        if not _is_int(self.n_gibbs) or self.n_gibbs < 1:
            bad("n_gibbs", "the number of Gibbs steps per update must be an integer >= 1")
        if self.learning_rate is not None and (
            not _is_real(self.learning_rate) or self.learning_rate <= 0
        ):
            bad("learning_rate", "the learning rate must be a number > 0 (or None for the default)")
        if not _is_real(self.lr_final_ratio) or not 0 < self.lr_final_ratio <= 1:
            bad("lr_final_ratio", "it must be in (0, 1]")
        if not _is_real(self.decay_after) or not 0 <= self.decay_after <= 1:
            bad("decay_after", "it must be in [0, 1]")
        if not _is_real(self.beta2) or not 0 <= self.beta2 < 1:
            bad("beta2", "it must be in [0, 1)")
        if not _is_real(self.epsilon) or self.epsilon <= 0:
            bad("epsilon", "it must be a number > 0")
        if not _is_int(self.seed) or self.seed < 0:
            bad("seed", "the seed must be an integer >= 0")
        if not isinstance(self.backend, str):
            bad("backend", "use 'auto', 'numpy', 'cupy' or 'strict'")
        if not _is_int(self.n_jobs) or self.n_jobs < 1:
            bad("n_jobs", "the number of chain threads must be an integer >= 1")
        if self.n_jobs > (self.n_chains or self.batch_size):
            bad("n_jobs", f"more chain threads than the {self.n_chains or self.batch_size} chains")

    def _check_data(self, X):
        """Return the training frames as a float32 (T, N) host array, or raise InputError."""
        if hasattr(X, "train") and hasattr(X, "visible"):
            if X.visible != self.visible:
                raise ConfigError(
                    f"the dataset has {X.visible!r} visible units but CRBM(visible={self.visible!r}); "
                    f"set visible={X.visible!r} or preprocess with visible={self.visible!r}"
                )
            X = X.train
        try:
            X = np.asarray(X, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"training data must be a Dataset or a numeric (T, N) array: {exc}"
            ) from exc
        if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
            raise InputError(
                f"training data must be a non-empty 2-D (frames, units) array; got shape {X.shape}"
            )
        if not np.all(np.isfinite(X)):
            raise InputError("training data contains NaN or inf; clean or drop those frames/units")
        if self.visible == "bernoulli" and not np.all((X == 0) | (X == 1)):
            raise InputError(
                "bernoulli visible units need 0/1 data but the training data has other "
                "values; binarise it (preprocess signal='spikes') or use "
                "visible='gaussian'"
            )
        if self.batch_size > X.shape[0]:
            raise ConfigError(
                f"CRBM setting batch_size={self.batch_size} is larger than the "
                f"{X.shape[0]} training frames; use batch_size <= {X.shape[0]}"
            )
        return np.ascontiguousarray(X)

    def _config(self):
        lr = self.learning_rate if self.learning_rate is not None else DEFAULT_LR[self.visible]
        return training.TrainConfig(
            visible=self.visible,
            penalty=self.penalty,
            lam=float(self.lam),
            n_gibbs=int(self.n_gibbs),
            learning_rate=float(lr),
            n_updates=int(self.n_updates),
            lr_final_ratio=float(self.lr_final_ratio),
            decay_after=float(self.decay_after),
            beta2=float(self.beta2),
            epsilon=float(self.epsilon),
            seed=int(self.seed),
            n_groups=int(self.n_jobs),
        )

    def _backend(self):
        from raysearch.backend import get_backend

        return get_backend(self.backend)

    # ---------------------------------------------------------------- fit
    def fit(self, X, callback=None, callback_every=100, checkpoint=None, resume_from=None):
        """Train by persistent contrastive divergence.

        Parameters
        ----------
        X : Dataset or array (T, N)
            A :class:`raysearch.data.preprocessing.Dataset` (its ``train`` frames are used) or the
            training frames.
        callback : callable, optional
            Called every ``callback_every`` updates and at the end with a dict: ``updates``,
            ``n_updates``, ``seconds``, ``health`` (reconstruction MSE on a fixed batch of at most
            100 training frames), ``mean_abs_w``, ``lr``, ``diverged``, ``diverged_reason``.
            Returning ``"stop"`` ends the fit after that update.
        callback_every : int
            K, the interval in updates between callbacks, divergence checks (non-finite
            parameters; for gaussian visibles also normalisability) and checkpoints.
        checkpoint : (path, every) or callable, optional
            Save the full training state to ``path`` every ``every`` updates (a multiple of K is
            best: checks happen at callback boundaries), or call ``checkpoint(self)`` at every
            boundary (``self.save_checkpoint(path)`` works from there).
        resume_from : path, optional
            A file written by :meth:`save_checkpoint`; the fit continues from its update count and
            ends with the same parameters as an uninterrupted fit (same seed, same backend).

        Returns
        -------
        self
        """
        self._check_settings()
        if not _is_int(callback_every) or callback_every < 1:
            raise ConfigError(f"callback_every={callback_every!r} must be an integer >= 1")
        if checkpoint is not None and not callable(checkpoint):
            try:
                ck_path, ck_every = checkpoint
            except (TypeError, ValueError):
                raise ConfigError("checkpoint must be (path, every) or a callable") from None
            if not _is_int(ck_every) or ck_every < 1:
                raise ConfigError(f"checkpoint interval {ck_every!r} must be an integer >= 1")
        Xh = self._check_data(X)
        # which data the checkpoints belong to (a resume on other data is refused)
        self._data_fingerprint = None
        if checkpoint is not None or resume_from is not None:
            from raysearch.crbm.io import data_fingerprint

            self._data_fingerprint = data_fingerprint(Xh)
        bk = self._backend()
        cfg = self._config()
        xp = bk.xp
        T, N = Xh.shape
        n_chains = self.n_chains or self.batch_size

        mom_host = training.data_moments(Xh, self.visible)
        if resume_from is not None:
            from raysearch.crbm.io import read_checkpoint

            state = read_checkpoint(resume_from)
            self._check_resume(state, N, resume_from)
            params_h, moments_h, chains_h = state["params"], state["moments"], state["chains"]
            start = int(state["update"])
        else:
            params_h = training.init_params(mom_host, self.n_hidden, self.visible, self.seed)
            moments_h = None
            chains_h = training.init_chains(mom_host, n_chains, self.visible, self.seed)
            start = 0

        params = {k: bk.asarray(v) for k, v in params_h.items()}
        moments = (
            {k: bk.asarray(v) for k, v in moments_h.items()}
            if moments_h is not None
            else training.init_moments(params, bk)
        )
        chains = bk.asarray(chains_h)
        mdata = {k: bk.asarray(v) for k, v in mom_host.items()}
        Xd = bk.asarray(Xh)
        health_batch = Xd[: min(100, T)]

        self.n_visible_, self.n_hidden_ = N, int(self.n_hidden)
        self.diverged_ = False
        self.diverged_reason_ = ""
        self._state = {"params": params, "moments": moments, "chains": chains, "update": start}
        t0 = time.perf_counter()
        update = start
        with contextlib.ExitStack() as stack:
            # the training frames on the backend, for snapshot() in callbacks; dropped at the end
            self._fit_frames = Xd
            stack.callback(setattr, self, "_fit_frames", None)
            stack.enter_context(np.errstate(all="ignore"))
            executor = None
            if bk.name == "numpy" and self.n_jobs > 1:
                from concurrent.futures import ThreadPoolExecutor

                from threadpoolctl import threadpool_limits

                executor = stack.enter_context(ThreadPoolExecutor(self.n_jobs))
                stack.enter_context(threadpool_limits(1))
            for u, batch in training.minibatches(
                Xd, start, cfg.n_updates, self.batch_size, self.seed, bk
            ):
                params, moments, chains = training.pcd_update(
                    params, moments, chains, batch, mdata, u, cfg, bk, executor
                )
                update = u + 1
                if update % callback_every and update < cfg.n_updates:
                    continue
                # boundary: the only place with host synchronisation
                self._state = {
                    "params": params,
                    "moments": moments,
                    "chains": chains,
                    "update": update,
                }
                finite = bool(bk.to_numpy(training.params_finite(params, bk)))
                stop = False
                if not finite:
                    self.diverged_ = True
                    self.diverged_reason_ = "non-finite parameters"
                    stop = True
                elif self.visible == "gaussian":
                    why = _unstable_reason(params, bk)
                    if why:
                        self.diverged_, self.diverged_reason_ = True, why
                        stop = True
                if callback is not None:
                    health = float(
                        bk.to_numpy(
                            training.reconstruction_error(params, health_batch, self.visible, bk)
                        )
                    )
                    progress = {
                        "updates": update,
                        "n_updates": cfg.n_updates,
                        "seconds": time.perf_counter() - t0,
                        "health": health,
                        "mean_abs_w": float(bk.to_numpy(xp.abs(params["weights"]).mean())),
                        "lr": training.learning_rate(
                            update - 1,
                            cfg.n_updates,
                            cfg.learning_rate,
                            cfg.lr_final_ratio,
                            cfg.decay_after,
                        ),
                        "diverged": self.diverged_,
                        "diverged_reason": self.diverged_reason_,
                    }
                    if callback(progress) == "stop":
                        stop = True
                if not self.diverged_ and checkpoint is not None:
                    if callable(checkpoint):
                        checkpoint(self)
                    elif update % ck_every == 0 or update == cfg.n_updates:
                        self.save_checkpoint(ck_path)
                if stop:
                    break
            self._state = {"params": params, "moments": moments, "chains": chains, "update": update}
            self._set_fitted(params, Xd, bk, update, self.diverged_)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _set_fitted(self, params, Xd, bk, update, diverged):
        """Learned attributes from training-state parameters: the sign gauge, ``hidden_var_`` over
        the frames ``Xd`` (backend array), the update count and the divergence flag."""
        final = training.sign_gauge(params, bk)
        with np.errstate(all="ignore"):
            _, c_mu = training.hidden_mean_var(final, Xd, bk)
        for k, v in final.items():
            setattr(self, PARAM_ATTRS[k], bk.to_numpy(v).astype(np.float32, copy=False))
        self.hidden_var_ = bk.to_numpy(c_mu).astype(np.float32, copy=False)
        self.n_visible_, self.n_hidden_ = int(self.weights_.shape[1]), int(self.weights_.shape[0])
        self.n_updates_done_ = int(update)
        self.diverged_ = bool(diverged) or not all(
            np.all(np.isfinite(getattr(self, PARAM_ATTRS[k]))) for k in final
        )
        if self.diverged_ and not getattr(self, "diverged_reason_", ""):
            self.diverged_reason_ = "non-finite parameters"

    def snapshot(self, X=None):
        """A fitted copy of this model at its current training state.

        Call it from a ``fit`` callback (the state of the last K-update boundary, e.g. to
        evaluate a model in the middle of its fit) or after ``fit``. The copy has the same
        settings and is what ``fit`` would leave if it stopped there: parameters in the sign
        gauge, ``hidden_var_`` over ``X``, ``n_updates_done_``, ``diverged_``. The running fit is
        not disturbed.

        Parameters
        ----------
        X : Dataset or array (T, N), optional
            The training frames (for ``hidden_var_``, as in ``fit``). Inside a ``fit`` callback
            leave it out: the frames ``fit`` already holds on its backend are used (no new
            check or transfer); after ``fit`` it is required.

        Returns
        -------
        CRBM
        """
        from sklearn.base import clone

        state = getattr(self, "_state", None)
        if state is None:
            raise ConfigError(
                "snapshot: this CRBM has no training state yet; call it during fit "
                "(in a callback) or after fit"
            )
        bk = self._backend()
        if X is None:
            Xd = getattr(self, "_fit_frames", None)
            if Xd is None:
                raise ConfigError(
                    "snapshot: pass the training frames X; outside fit the model does not keep them"
                )
        else:
            Xh = self._check_data(X)
            if Xh.shape[1] != state["params"]["weights"].shape[1]:
                raise InputError(
                    f"snapshot: X has {Xh.shape[1]} neurons, the model "
                    f"{state['params']['weights'].shape[1]}"
                )
            Xd = bk.asarray(Xh)
        snap = clone(self)
        snap.diverged_reason_ = getattr(self, "diverged_reason_", "")
        snap._set_fitted(
            state["params"], Xd, bk, state["update"], getattr(self, "diverged_", False)
        )
        return snap

    def _check_resume(self, state, n_visible, path="the checkpoint"):
        s = state["settings"]
        mine = self.get_params()
        keys = (
            "n_hidden",
            "visible",
            "penalty",
            "lam",
            "n_updates",
            "batch_size",
            "n_chains",
            "n_gibbs",
            "learning_rate",
            "lr_final_ratio",
            "decay_after",
            "beta2",
            "epsilon",
            "seed",
            "n_jobs",
        )
        diff = [k for k in keys if s.get(k, 1 if k == "n_jobs" else None) != mine[k]]
        if diff:
            raise ConfigError(
                "cannot resume: the checkpoint was written with other settings ("
                + ", ".join(f"{k}={s.get(k)!r} vs {mine[k]!r}" for k in diff)
                + ")"
            )
        if state["params"]["weights"].shape[1] != n_visible:
            raise InputError(
                f"cannot resume: the checkpoint has "
                f"{state['params']['weights'].shape[1]} visible units, the data "
                f"{n_visible}"
            )
        saved, mine_fp = state.get("data_fingerprint"), getattr(self, "_data_fingerprint", None)
        if saved is None:
            import logging

            logging.getLogger(__name__).warning(
                "%s records no fingerprint of its training data (written by an older version); "
                "cannot check that it was fitted on the same data",
                path,
            )
        elif mine_fp is not None and saved != mine_fp:
            raise InputError(
                f"cannot resume from {path}: it was written while fitting other "
                "training data (same settings and number of units, but another "
                "recording, preprocessing or split); resume on the data it was "
                "fitted on, or start a new fit without resuming"
            )

    # ---------------------------------------------------------------- state files
    def save_checkpoint(self, path):
        """Write the full training state (parameters, RMSprop moments, persistent chains, update
        count, settings) to ``path`` (HDF5, atomic). Valid during and after :meth:`fit`."""
        from raysearch.crbm.io import write_checkpoint

        if getattr(self, "_state", None) is None:
            raise ConfigError("no training state to checkpoint: call fit first")
        bk = self._backend()
        st = self._state
        write_checkpoint(
            path,
            {
                "params": {k: bk.to_numpy(v) for k, v in st["params"].items()},
                "moments": {k: bk.to_numpy(v) for k, v in st["moments"].items()},
                "chains": bk.to_numpy(st["chains"]),
                "update": int(st["update"]),
                "settings": self.get_params(),
                "data_fingerprint": getattr(self, "_data_fingerprint", None),
            },
        )
        return path

    def save(self, path, dataset=None):
        """Write the fitted model to an HDF5 file (layout in :mod:`raysearch.crbm.io`)."""
        from raysearch.crbm.io import save_model

        return save_model(self, path, dataset=dataset)

    @classmethod
    def load(cls, path):
        """Read a model file written by :meth:`save`; InputError if it is not one."""
        from raysearch.crbm.io import load_model

        return load_model(path, cls)

    # ---------------------------------------------------------------- inference (host in/out)
    def _check_fitted(self):
        if not hasattr(self, "weights_"):
            raise ConfigError("this CRBM is not fitted yet: call fit() or CRBM.load()")

    def _params(self, bk):
        self._check_fitted()
        return {k: bk.asarray(getattr(self, a)) for k, a in PARAM_ATTRS.items() if hasattr(self, a)}

    def _as_visible(self, V):
        V = np.asarray(V, dtype=np.float32)
        if V.ndim == 1:
            V = V[None, :]
        if V.ndim != 2 or V.shape[1] != self.weights_.shape[1]:
            raise InputError(f"expected (T, {self.weights_.shape[1]}) visible data, got {V.shape}")
        return V

    def _rng(self, bk, rng):
        if rng is None or _is_int(rng):
            return bk.rng(int(self.seed if rng is None else rng), 0)
        return rng

    def transform(self, V):
        """E[h | v] for every row of V: (T, N) -> (T, M) numpy float32."""
        return self.mean_hiddens(V)

    def mean_hiddens(self, V):
        """E[h | v], (T, M)."""
        bk = self._backend()
        p = self._params(bk)
        V = self._as_visible(V)
        I = training.hidden_inputs(p, bk.asarray(V))
        return bk.to_numpy(units.drelu_mean(I, *training._hidden(p), bk))

    def sample_hiddens(self, V, rng=None):
        """One draw of h | v per row, (T, M). ``rng``: seed (int) or a backend generator."""
        self._check_fitted()
        bk = self._backend()
        p = self._params(bk)
        return bk.to_numpy(
            training.sample_hiddens(p, bk.asarray(self._as_visible(V)), bk, self._rng(bk, rng))
        )

    def sample_visibles(self, H, rng=None):
        """One draw of v | h per row of H (T, M), (T, N)."""
        self._check_fitted()
        bk = self._backend()
        p = self._params(bk)
        H = bk.asarray(np.atleast_2d(np.asarray(H, dtype=np.float32)))
        return bk.to_numpy(training.sample_visibles(p, H, self.visible, bk, self._rng(bk, rng)))

    def gibbs(self, V, n_steps, rng=None):
        """Run ``n_steps`` block-Gibbs steps from the rows of V; returns the final v (T, N)."""
        self._check_fitted()
        bk = self._backend()
        p = self._params(bk)
        return bk.to_numpy(
            training.gibbs(
                p, bk.asarray(self._as_visible(V)), n_steps, self.visible, bk, self._rng(bk, rng)
            )
        )

    def free_energy(self, V):
        """F(v) = -log P(v) - log Z for every row of V, (T,)."""
        bk = self._backend()
        p = self._params(bk)
        V = bk.asarray(self._as_visible(V))
        return bk.to_numpy(
            units.free_energy(
                V,
                p["weights"],
                p["fields"],
                training._hidden(p),
                self.visible,
                bk,
                gamma=p.get("visible_gamma"),
            )
        )
