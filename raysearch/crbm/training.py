"""Persistent contrastive divergence for the compositional RBM, as pure functions.

Every function here takes its inputs explicitly (parameters, optimiser state, a minibatch, a
:class:`raysearch.backend.Backend`) and returns new arrays; nothing is mutated in place and nothing
moves to the host, so one update never synchronises with a GPU. The estimator
(:mod:`raysearch.crbm.estimator`) owns the loop, the callbacks and the checkpoints.

Parameters are a dict of backend arrays (float32):

=================  ========  ===============================================
key                shape     meaning (docs/model.md §1)
=================  ========  ===============================================
``weights``        (M, N)    w, hidden x visible
``fields``         (N,)      g, visible fields
``gamma_plus``     (M,)      gp of the dReLU potential
``gamma_minus``    (M,)      gm
``theta_plus``     (M,)      tp
``theta_minus``    (M,)      tm (the reference code's sign convention)
``visible_gamma``  (N,)      only for gaussian visible units
=================  ========  ===============================================

The optimiser state ``moments`` holds, for every parameter, the exponential moving average of its
squared (clipped) gradient (RMSprop without a first moment, bias-corrected, as the reference's
"ADAM" does for these parameters).

Hidden-unit normalisation: the same fixed points as the reference, other coordinates
----------------------------------------------------------------------------------------
The marginal P(v) is invariant along each hidden unit's scale-gauge orbit h -> h/s,
w_mu -> s w_mu, (gp, gm) -> s^2 (gp, gm), (tp, tm) -> s (tp, tm), whose tangent at s = 1 is
t_mu = (w_mu, 2 gp, 2 gm, tp, tm). So the log-likelihood L has no gradient along t_mu, but the
penalty R does: each unit's share R_mu is homogeneous of degree k in w_mu (``l1``:
R_mu = ||w_mu||_1, k = 1; ``l2l1``: R_mu = ||w_mu||_1^2 / 2, k = 2), so t_mu . grad R_mu =
k R_mu. The reference (PGM) fixes the gauge by its batch-norm parameterisation: gamma, the
overall scale of (gp, gm), is not trained but relaxed towards the value that gives Var(h_mu) = 1
on the minibatch, and the gradients of W, theta, delta, eta are taken through that rule (its cross-derivatives
d gamma/dW, d gamma/d(theta, delta, eta)). Its fixed points are therefore the stationary points
of L - lam R on the surface Var_data(h_mu) = 1, i.e. the KKT points

    grad(L - lam R) = nu_mu grad Var(h_mu),   Var(h_mu) = 1.                         (1)

raysearch keeps the parameters (w, gp, gm, tp, tm) and reaches the same points with an exactly
equivalent formulation. Taking t_mu . of (1) gives nu_mu = lam k R_mu / (2 Var(h_mu)) (because
t_mu . grad Var = -2 Var), so each update ascends

    G = grad L - lam grad R - nu grad Var,   nu_mu = lam ||w_mu||_1^k / (2 Var(h_mu)),  (2)

(:func:`gradients`, :func:`normalisation_multiplier`, :func:`variance_gradient`), which has no
component along any orbit (t_mu . G = -lam k R_mu + 2 nu_mu Var = 0) and vanishes at Var = 1
exactly where (1) holds. The normalisation itself is then a pure gauge move that changes neither
P(v) nor the objective's stationary points: after the step the unit is moved along its orbit by
s^2 = Var(h_mu)^rate, rate = 0.25 lr_t / lr_0 (the reference's batch-norm relaxation rate),
s^2 clipped to [0.75, 1/0.75] per update (the reference lets gamma drop by at most 25% per
update), so Var(h_mu) -> 1 on the data. The RMSprop moments are rescaled with the parameters (a
gradient scales as 1/s, 1/s^2 for gp/gm). Var(h_mu) is measured, as in the reference, on the
minibatch's positive phase: variance of E[h|v] over its frames plus the mean of Var(h|v).

What is the same as the reference: the model, the PCD estimator (Rao-Blackwellised phases, the
full-data visible moments, clipping to [-1, 1], RMSprop without first moment, the schedule), the
mean centring (below), the normalisation target and so the penalised fixed points (1), and the
bounds: |eta| <= 0.95 and the jump bound (``jump_max`` = 20), :func:`bound_hidden`, plus
gp, gm >= 0.05. What is not: the coordinates in which the steps are taken (the reference steps
theta, delta, eta and sets gamma by rule; raysearch steps gp, gm, tp, tm and the gauge), so the
path to a fixed point differs, and so do the points where a bound is active (a projected step in
other coordinates), and the minibatch noise acts differently on the way.

Mean centring, as in the reference: after each step the change of the mean hidden input
``Delta = (W_new - W_old) @ <v>_data`` is added to ``theta_plus`` and subtracted from
``theta_minus``, so a change of the weights does not shift where the data's inputs sit relative
to the dReLU thresholds. This is a change of coordinates (theta measured from the mean input),
not a constraint: it changes the path, not the stationary points (the reference also adds its
chain term d theta/dW = <v>_minibatch to the weights' gradient, which vanishes wherever the
theta gradient does; not reproduced), and like the reference it does not force <h_mu> = 0 (a shift
of h is not a symmetry of a dReLU unit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from raysearch.crbm import units

#: Lower bound of gp, gm and of the visible gamma (reference: ``gamma_min``).
GAMMA_MIN = 0.05
#: Largest per-update change of the normalising scale s^2 (reference: gamma >= 0.75 gamma_old).
SCALE_STEP = 0.75
#: Bound on the dReLU asymmetry |eta| (reference: eta clipped to +-0.95), see :func:`bound_hidden`.
ETA_MAX = 0.95
#: Bound on the jump of a bistable unit (reference: ``jump_max`` = 20), see :func:`bound_hidden`.
JUMP_MAX = 20.0
#: Random streams: every draw of update ``t`` comes from ``bk.rng(seed, STREAM_GIBBS, t)``.
STREAM_GIBBS = 1
STREAM_INIT = 2
STREAM_BATCH = 3

HIDDEN_KEYS = ("gamma_plus", "gamma_minus", "theta_plus", "theta_minus")


@dataclass(frozen=True)
class TrainConfig:
    """Settings one PCD update needs (a validated subset of the estimator's settings).

    Attributes
    ----------
    visible : {"bernoulli", "gaussian"}
    penalty : {"l1", "l2l1"}
    lam : float
        Penalty strength (not divided by N or by the batch size).
    n_gibbs : int
        Block-Gibbs steps per update for the persistent chains.
    learning_rate : float
        Initial learning rate lr_0.
    n_updates : int
        Total number of updates (for the schedule).
    lr_final_ratio, decay_after : float
        Schedule: lr_0 for the first ``decay_after * n_updates`` updates, then geometric decay to
        ``lr_final_ratio * lr_0`` at the last update.
    beta2, epsilon : float
        RMSprop second-moment rate and denominator offset.
    seed : int
    n_groups : int
        The persistent chains are advanced in this many independent row groups, group g with its
        own random stream ``(seed, STREAM_GIBBS, update, g)`` (one group: ``(seed, STREAM_GIBBS,
        update)``), so that groups can run in parallel threads. Results depend on it like on the
        seed.
    """

    visible: str
    penalty: str
    lam: float
    n_gibbs: int
    learning_rate: float
    n_updates: int
    lr_final_ratio: float = 0.01
    decay_after: float = 0.5
    beta2: float = 0.999
    epsilon: float = 1e-6
    seed: int = 0
    n_groups: int = 1


# --------------------------------------------------------------------------------------------
# schedule, initialisation
# --------------------------------------------------------------------------------------------


def learning_rate(update, n_updates, lr0, lr_final_ratio=0.01, decay_after=0.5):
    """Learning rate used by update number ``update`` (0-based).

    Constant ``lr0`` while ``update < decay_after * n_updates``; afterwards geometric decay, one
    factor per update, reaching ``lr_final_ratio * lr0`` at the last update (``n_updates - 1``).

    Returns
    -------
    float
    """
    start = int(math.floor(decay_after * n_updates))
    if update < start or n_updates - 1 <= start:
        return float(lr0)
    frac = (update - start) / (n_updates - 1 - start)
    return float(lr0 * lr_final_ratio ** min(frac, 1.0))


def data_moments(X, visible):
    """Full-training-set moments used by the positive phase of the fields (host numpy).

    Parameters
    ----------
    X : ndarray (T, N)
    visible : str

    Returns
    -------
    dict with ``mean`` (N,) float32 and, for gaussian units, ``sq_mean`` (N,) float32.
    """
    X = np.asarray(X)
    out = {"mean": X.mean(axis=0, dtype=np.float64).astype(np.float32)}
    if visible == "gaussian":
        out["sq_mean"] = np.mean(np.square(X, dtype=np.float64), axis=0).astype(np.float32)
    return out


def init_params(moments, n_hidden, visible, seed):
    """Initial parameters (host numpy float32), docs/model.md §2 "Initialisation".

    w ~ Normal(0, 0.1 / N); bernoulli fields = logit of the training mean (eps 1e-6); gaussian units
    get gamma_i = 1 / Var(v_i) and g_i = <v_i> / Var(v_i), i.e. the independent model with the data's
    mean and variance (for z-scored data: g = mean, gamma = 1, as docs/model.md says); gp = gm = 1,
    tp = tm = 0. The draws come from a NumPy generator seeded with (seed, STREAM_INIT), so every
    backend starts from the same parameters.
    """
    mean = np.asarray(moments["mean"], dtype=np.float64)
    n_visible = mean.shape[0]
    rng = np.random.default_rng([int(seed), STREAM_INIT])
    W = (rng.standard_normal((n_hidden, n_visible)) * math.sqrt(0.1 / n_visible)).astype(np.float32)
    params = {"weights": W}
    if visible == "bernoulli":
        eps = 1e-6
        params["fields"] = np.log((mean + eps) / (1.0 - mean + eps)).astype(np.float32)
    else:
        var = np.maximum(np.asarray(moments["sq_mean"], dtype=np.float64) - mean**2, 1e-4)
        params["visible_gamma"] = (1.0 / var).astype(np.float32)
        params["fields"] = (mean / var).astype(np.float32)
    params["gamma_plus"] = np.ones(n_hidden, np.float32)
    params["gamma_minus"] = np.ones(n_hidden, np.float32)
    params["theta_plus"] = np.zeros(n_hidden, np.float32)
    params["theta_minus"] = np.zeros(n_hidden, np.float32)
    return params


def init_chains(moments, n_chains, visible, seed):
    """Initial persistent chains (host numpy float32, (n_chains, N)): independent samples at the
    data means (bernoulli) or Normal(mean, std) (gaussian)."""
    mean = np.asarray(moments["mean"], dtype=np.float64)
    rng = np.random.default_rng([int(seed), STREAM_INIT, 1])
    if visible == "bernoulli":
        return (rng.random((n_chains, mean.shape[0])) < mean).astype(np.float32)
    std = np.sqrt(np.maximum(np.asarray(moments["sq_mean"], dtype=np.float64) - mean**2, 1e-4))
    return (mean + std * rng.standard_normal((n_chains, mean.shape[0]))).astype(np.float32)


def init_moments(params, bk):
    """Zero second moments, one per parameter, on the backend."""
    return {k: bk.xp.zeros(v.shape, dtype=np.float32) for k, v in params.items()}


def epoch_permutation(epoch, n_frames, seed):
    """The order in which epoch ``epoch`` visits the training frames (host numpy int64)."""
    return np.random.default_rng([int(seed), STREAM_BATCH, int(epoch)]).permutation(n_frames)


def batch_indices(update, n_frames, batch_size, seed):
    """Training-frame indices of minibatch ``update`` (host numpy int64, (batch_size,)).

    Frames are visited epoch by epoch in a permutation drawn from (seed, STREAM_BATCH, epoch);
    the last incomplete batch of an epoch is skipped. Depends only on its arguments, so a resumed
    fit sees the same minibatches as an uninterrupted one.
    """
    per_epoch = n_frames // batch_size
    epoch, k = divmod(int(update), per_epoch)
    return epoch_permutation(epoch, n_frames, seed)[k * batch_size : (k + 1) * batch_size]


def minibatches(Xd, start, stop, batch_size, seed, bk):
    """Yield ``(update, batch)`` for updates ``start .. stop-1``: the rows of the backend array
    ``Xd`` (T, N) chosen by :func:`batch_indices`. The permutation moves to the backend once per
    epoch (not once per update), so the loop issues no small host-to-device copies."""
    T = Xd.shape[0]
    per_epoch = T // batch_size
    cur, perm = None, None
    for update in range(int(start), int(stop)):
        epoch, k = divmod(update, per_epoch)
        if epoch != cur:
            perm = bk.asarray(epoch_permutation(epoch, T, seed), dtype=np.int64)
            cur = epoch
        yield update, Xd[perm[k * batch_size : (k + 1) * batch_size]]


# --------------------------------------------------------------------------------------------
# conditionals and sampling
# --------------------------------------------------------------------------------------------


def hidden_inputs(params, V):
    """I_mu(v) = sum_i w_{mu i} v_i for every row of V: (B, N) -> (B, M)."""
    return V @ params["weights"].T


def visible_inputs(params, H):
    """I_i(h) = sum_mu w_{mu i} h_mu for every row of H: (B, M) -> (B, N)."""
    return H @ params["weights"]


def _hidden(params):
    return tuple(params[k] for k in HIDDEN_KEYS)


def sample_hiddens(params, V, bk, rng):
    """One draw of h ~ P(h | v) for each row of V, (B, M)."""
    return units.drelu_sample(hidden_inputs(params, V), *_hidden(params), bk, rng)


def sample_visibles(params, H, visible, bk, rng):
    """One draw of v ~ P(v | h) for each row of H, (B, N)."""
    I = visible_inputs(params, H)
    if visible == "bernoulli":
        return units.bernoulli_sample(I, params["fields"], bk, rng)
    return units.gaussian_sample(I, params["fields"], params["visible_gamma"], bk, rng)


def mean_visibles(params, H, visible, bk):
    """E[v | h] for each row of H, (B, N)."""
    I = visible_inputs(params, H)
    if visible == "bernoulli":
        return units.bernoulli_mean(I, params["fields"], bk)
    return units.gaussian_mean(I, params["fields"], params["visible_gamma"], bk)


def gibbs(params, V, n_steps, visible, bk, rng, WT=None):
    """Advance chains V (C, N) by ``n_steps`` block-Gibbs steps (h | v, then v | h).

    Parameters
    ----------
    WT : (N, M) backend array, optional
        :func:`weights_t` of ``params``, computed here when not given (pass it to share one copy
        between calls). On the CPU the hidden inputs are ``V @ WT``, a faster product than
        ``V @ W.T`` with OpenBLAS (8-29% measured, see BENCHMARKS.md).

    Returns the new visible states (C, N) float32; V is not modified.
    """
    if WT is None:
        WT = weights_t(params, bk)
    hid = _hidden(params)
    K = bk.cpu_kernels if visible == "bernoulli" else None
    if K is not None:
        # compiled CPU path (raysearch.crbm.cpu_kernels): the draw of v also lists its ones, and the
        # hidden inputs are sums of rows of WT over them (spikes are sparse); same law as below
        V = bk.xp.asarray(V, dtype=np.float32)
        I = K.sparse_hidden_inputs(V, WT)
        for _ in range(int(n_steps)):
            H = units.drelu_sample(I, *hid, bk, rng)
            V, I = K.bernoulli_step(visible_inputs(params, H), params["fields"], WT, rng.key64())
        return V
    for _ in range(int(n_steps)):
        I = hidden_inputs(params, V) if WT is None else V @ WT
        H = units.drelu_sample(I, *hid, bk, rng)
        V = sample_visibles(params, H, visible, bk, rng)
    return V.astype(np.float32, copy=False)


def weights_t(params, bk):
    """C-contiguous (N, M) copy of the weights' transpose on the CPU backends, None on a device
    (where ``V @ W.T`` is used as it is)."""
    if bk.is_device:
        return None
    return bk.xp.ascontiguousarray(params["weights"].T)


def advance_chains(params, chains, update, cfg, bk, executor=None, WT=None):
    """The Gibbs part of update ``update``: ``cfg.n_gibbs`` steps of every persistent chain.

    With ``cfg.n_groups > 1`` the chains are split into that many contiguous row groups, each
    advanced with its own random stream; ``executor`` (a ``concurrent.futures`` executor) runs the
    groups in parallel, None runs them one after the other with the same result. NumPy's matrix
    products and ufuncs release the GIL, so threads give real parallelism on a CPU.

    Returns
    -------
    (C, N) float32 backend array; ``chains`` is not modified.
    """
    G = int(cfg.n_groups)
    if WT is None:
        WT = weights_t(params, bk)
    if G <= 1:
        return gibbs(
            params,
            chains,
            cfg.n_gibbs,
            cfg.visible,
            bk,
            bk.rng(cfg.seed, STREAM_GIBBS, int(update)),
            WT,
        )
    C = chains.shape[0]
    bounds = [(g * C // G, (g + 1) * C // G) for g in range(G)]

    def run(g):
        a, b = bounds[g]
        return gibbs(
            params,
            chains[a:b],
            cfg.n_gibbs,
            cfg.visible,
            bk,
            bk.rng(cfg.seed, STREAM_GIBBS, int(update), g),
            WT,
        )

    parts = list(executor.map(run, range(G)) if executor is not None else map(run, range(G)))
    return bk.xp.concatenate(parts, axis=0)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


def penalty_gradient(W, penalty, lam, bk):
    """Gradient of the penalty R(W) with respect to W (M, N).

    ``l1``: R = lam * sum |w|, gradient lam * sign(w).
    ``l2l1``: R = lam/2 * sum_mu (sum_i |w_{mu i}|)^2, gradient lam * sign(w_{mu i}) * sum_j |w_{mu j}|.
    """
    xp = bk.xp
    s = xp.sign(W)
    if penalty == "l1":
        s *= np.float32(lam)
        return s
    if penalty == "l2l1":
        s *= np.float32(lam) * xp.sum(xp.abs(W), axis=1, keepdims=True)
        return s
    raise ValueError(f"unknown penalty {penalty!r}")


def penalty_value(W, penalty, lam, bk):
    """Value of the penalty R(W) (backend scalar)."""
    xp = bk.xp
    if penalty == "l1":
        return lam * xp.sum(xp.abs(W))
    return 0.5 * lam * xp.sum(xp.sum(xp.abs(W), axis=1) ** 2)


def phase_moments(params, V, bk):
    """Rao-Blackwellised hidden statistics of a set of visible configurations.

    Parameters
    ----------
    V : (B, N)

    Returns
    -------
    dict with ``h`` = E[h|v] (B, M) and the batch means of the branch moments ``hp``, ``hp2``,
    ``hm``, ``hm2`` (M,) (h+ = max(h, 0), h- = min(h, 0)), plus ``h2`` = <E[h^2|v]> (M,).
    """
    I = hidden_inputs(params, V)
    ep, ep2, em, em2 = units.drelu_branch_moments(I, *_hidden(params), bk)
    hp, hp2, hm, hm2 = (x.mean(axis=0) for x in (ep, ep2, em, em2))
    return {"h": ep + em, "hp": hp, "hp2": hp2, "hm": hm, "hm2": hm2, "h2": hp2 + hm2}


def _matmul_rows(A, B, n_blocks, bk, executor=None, product=None):
    """``A @ B`` with the rows of the result computed in ``n_blocks`` contiguous blocks, in
    parallel threads when ``executor`` is given (NumPy releases the GIL in BLAS), one after the
    other otherwise (the same numbers). On a device, or with one block, a plain product.
    ``product(A_rows, B)`` replaces ``A_rows @ B`` (e.g. a sparse kernel) when given."""
    R = A.shape[0]
    G = min(int(n_blocks), R)
    if G <= 1 or bk.is_device:
        return A @ B if product is None else product(A, B)
    out = bk.xp.empty((R, B.shape[1]), dtype=bk.xp.result_type(A, B))

    def run(g):
        a, b = g * R // G, (g + 1) * R // G
        if product is None:
            bk.xp.matmul(A[a:b], B, out=out[a:b])
        else:
            out[a:b] = product(A[a:b], B)

    list(executor.map(run, range(G)) if executor is not None else map(run, range(G)))
    return out


def gradients(
    params,
    V_pos,
    V_neg,
    moments_data,
    cfg,
    bk,
    WT=None,
    executor=None,
    penalise=True,
    neg_weights=None,
):
    """Log-likelihood ascent direction for every parameter (unclipped), and Var(h) on the data.

    Parameters
    ----------
    V_pos : (B, N)
        Data minibatch.
    V_neg : (C, N)
        Persistent-chain states (already advanced).
    moments_data : dict
        Backend arrays ``mean`` (N,) (and ``sq_mean`` for gaussian units) of the full training set.
    cfg : TrainConfig
    WT : (N, M) backend array, optional
        :func:`weights_t` of ``params`` (computed here when not given).
    executor : concurrent.futures.Executor, optional
        With ``cfg.n_groups > 1`` the two matrix products are computed in ``n_groups`` row blocks,
        in parallel threads when this is given (same numbers without it).
    penalise : bool
        Subtract the penalty gradient lam * grad R(W) from the weights' gradient (False:
        :func:`weights_step` does it later). The normalisation term (below) is included either way.
    neg_weights : (C,) backend array, optional
        Probabilities of the rows of ``V_neg`` (summing to 1) instead of equal weights: with all
        2^N visible states and their exact probabilities the negative phase is exact (tests).

    Returns
    -------
    grads : dict of arrays shaped like ``params``
        w: <v E[h|v]>_data - <v E[h|v]>_chains - penalty gradient; fields: <v>_full - <v>_chains;
        dReLU: (-1/2, -1/2, -1, +1) x (<h+^2>, <h-^2>, <h+>, <h->) data minus chains; visible gamma:
        -1/2 (<v^2>_full - <v^2>_chains). With ``cfg.lam > 0`` the normalisation term
        ``- nu_mu * dVar(h_mu)/dparam`` (:func:`variance_gradient`, :func:`normalisation_multiplier`)
        is added to the weights and the four dReLU parameters: the gradient is then the one of
        the module docstring, with no component along the scale-gauge orbits.
    var_h : (M,)
        Var(h_mu) on the minibatch: <E[h^2|v]> - <E[h|v]>^2.

    Notes
    -----
    Both phases go through one (B + C, N) x (N, M) product and one call of the dReLU moments, and
    the weight gradient is one (M, B + C) x (B + C, N) product; the normalisation term's weight
    part rides in the same product (it is a sum over the minibatch's rows, like the positive
    phase).
    """
    xp = bk.xp
    B, C = V_pos.shape[0], V_neg.shape[0]
    Vs = xp.concatenate([V_pos, V_neg], axis=0)
    if WT is None:
        WT = weights_t(params, bk)
    G = cfg.n_groups
    K = bk.cpu_kernels if cfg.visible == "bernoulli" else None
    I = (
        hidden_inputs(params, Vs)
        if WT is None
        else _matmul_rows(Vs, WT, G, bk, executor, None if K is None else K.sparse_hidden_inputs)
    )
    ep, ep2, em, em2 = units.drelu_branch_moments(I, *_hidden(params), bk)
    pos = [x[:B].mean(axis=0) for x in (ep, ep2, em, em2)]
    if neg_weights is None:
        neg = [x[B:].mean(axis=0) for x in (ep, ep2, em, em2)]
        neg_v = V_neg.mean(axis=0)
    else:
        w = xp.asarray(neg_weights, dtype=np.float32)
        neg = [w @ x[B:] for x in (ep, ep2, em, em2)]
        neg_v = w @ V_neg
    var_h = (pos[1] + pos[3]) - (pos[0] + pos[2]) ** 2
    corr = None
    if cfg.lam > 0:
        nu = normalisation_multiplier(params["weights"], var_h, cfg.penalty, cfg.lam, bk)
        dI, dhid = variance_gradient(I[:B], ep[:B], ep2[:B], em[:B], em2[:B], params, bk)
        corr = {k: nu * d for k, d in dhid.items()}
    Hs = ep
    Hs += em  # E[h|v], (B + C, M)
    if corr is not None:
        dI *= nu
        Hs[:B] -= dI  # - nu dVar/dw rides in the weight product
    Hs[:B] *= np.float32(1.0 / B)
    if neg_weights is None:
        Hs[B:] *= np.float32(-1.0 / C)
    else:
        Hs[B:] *= -w[:, None]
    gW = _matmul_rows(Hs.T, Vs, G, bk, executor)
    if penalise and cfg.lam > 0:
        gW -= penalty_gradient(params["weights"], cfg.penalty, cfg.lam, bk)
    grads = {
        "weights": gW,
        "fields": moments_data["mean"] - neg_v,
        "gamma_plus": np.float32(-0.5) * (pos[1] - neg[1]),
        "gamma_minus": np.float32(-0.5) * (pos[3] - neg[3]),
        "theta_plus": -(pos[0] - neg[0]),
        "theta_minus": pos[2] - neg[2],
    }
    if corr is not None:
        for k, c in corr.items():
            grads[k] = grads[k] - c
    if cfg.visible == "gaussian":
        sq = (V_neg * V_neg).mean(axis=0) if neg_weights is None else w @ (V_neg * V_neg)
        grads["visible_gamma"] = np.float32(-0.5) * (moments_data["sq_mean"] - sq)
    return grads, var_h


def normalisation_multiplier(W, var_h, penalty, lam, bk):
    """nu_mu = lam * k * R_mu(w_mu) / (2 Var(h_mu)), the multiplier of the normalisation term.

    R_mu is hidden unit mu's share of the penalty without lam, homogeneous of degree k in w_mu:
    ``l1`` R_mu = ||w_mu||_1 (k = 1), ``l2l1`` R_mu = ||w_mu||_1^2 / 2 (k = 2); so
    nu_mu = lam ||w_mu||_1^k / (2 Var(h_mu)): the one multiplier for which
    grad(L - lam R) - nu grad Var has no component along unit mu's scale-gauge orbit (see the
    module docstring). Var is floored at 1e-8.

    Returns
    -------
    (M,) array
    """
    xp = bk.xp
    a = xp.sum(xp.abs(W), axis=1)
    if penalty == "l2l1":
        a = a * a
    elif penalty != "l1":
        raise ValueError(f"unknown penalty {penalty!r}")
    return a * (np.float32(0.5 * lam) / xp.maximum(var_h, np.float32(1e-8)))


def variance_gradient(I, ep, ep2, em, em2, params, bk):
    """Derivatives of Var(h_mu) = <E[h^2|v]> - <E[h|v]>^2 (over the B rows of a minibatch).

    With the branch sums A+_n = p+ E[h^n | h >= 0 branch], A-_n likewise (n = 1, 2 are the
    arguments, n = 3, 4 follow from the truncated-normal recursion A_n = mu A_{n-1}
    + (n-1)/g A_{n-2}, mu+ = (I - tp)/gp, mu- = (I + tm)/gm, exact for n >= 3) and
    m_n = A+_n + A-_n = E[h^n | v]:

    * dVar/dw_{mu i} = (1/B) sum_b D_{b mu} v_{b i}, D = (m3 - m2 m1) - 2 <m1> (m2 - m1^2)
      (d m1/dI = Var(h|I), d m2/dI = Cov(h^2, h | I));
    * for a dReLU parameter p with energy feature phi_p (h+^2/2, h-^2/2, h+, max(-h, 0)):
      d m_n/dp = -Cov(h^n, phi_p | I), so
      dVar/dp = -<Cov(h^2, phi_p) - 2 <m1> Cov(h, phi_p)>.

    Parameters
    ----------
    I : (B, M)
        Hidden inputs of the minibatch.
    ep, ep2, em, em2 : (B, M)
        :func:`raysearch.crbm.units.drelu_branch_moments` of ``I`` (not modified).
    params : dict

    Returns
    -------
    D : (B, M) new array
    dhid : dict ``gamma_plus``, ``gamma_minus``, ``theta_plus``, ``theta_minus`` -> (M,)
    """
    gp, gm, tp, tm = _hidden(params)
    ip, im = np.float32(1.0) / gp, np.float32(1.0) / gm
    mu_p = (I - tp) * ip
    mu_m = (I + tm) * im
    ap3 = mu_p * ep2 + (2 * ip) * ep
    ap4 = mu_p * ap3 + (3 * ip) * ep2
    am3 = mu_m * em2 + (2 * im) * em
    am4 = mu_m * am3 + (3 * im) * em2
    m1 = ep + em
    m2 = ep2 + em2
    m3 = ap3 + am3
    c1 = m1.mean(axis=0)
    two_c1 = 2 * c1

    def cov_term(e0, e1, e2):
        # -<Cov(h^2, phi) - 2 <m1> Cov(h, phi)> for phi with E[phi] = e0, E[h phi] = e1,
        # E[h^2 phi] = e2
        t = (e2 - m2 * e0) - two_c1 * (e1 - m1 * e0)
        return -t.mean(axis=0)

    half = np.float32(0.5)
    dhid = {
        "gamma_plus": half * cov_term(ep2, ap3, ap4),
        "gamma_minus": half * cov_term(em2, am3, am4),
        "theta_plus": cov_term(ep, ep2, ap3),
        "theta_minus": -cov_term(em, em2, am3),
    }
    D = m3 - m2 * m1
    D -= two_c1 * (m2 - m1 * m1)
    return D, dhid


# --------------------------------------------------------------------------------------------
# optimiser, constraints, normalisation, gauge
# --------------------------------------------------------------------------------------------


def _rmsprop_constants(lr, t, beta2, epsilon):
    """float32 constants of one RMSprop step: (beta2, 1 - beta2, 1 / (1 - beta2^t), lr, epsilon)."""
    return (
        np.float32(beta2),
        np.float32(1.0 - beta2),
        np.float32(1.0 / (1.0 - beta2**t)),
        np.float32(lr),
        np.float32(epsilon),
    )


def rmsprop_array(p, m, g, consts, bk, out_p=None, out_m=None):
    """One clipped, bias-corrected RMSprop ascent step of one parameter array.

    Parameters
    ----------
    p, m : arrays of one shape
        Parameter and its squared-gradient average (not modified).
    g : array of the same shape
        Its gradient, overwritten (clipped to [-1, 1], then used as work space).
    consts : tuple
        :func:`_rmsprop_constants`.
    out_p, out_m : arrays, optional
        Where to write the new parameter and average (new arrays when not given).

    Returns
    -------
    (new_p, new_m)
    """
    xp = bk.xp
    b2, one_m_b2, inv_bc, lr32, eps32 = consts
    g = xp.clip(g, -1.0, 1.0, out=g)
    m_new = xp.multiply(m, b2, out=out_m)
    den = g * g
    den *= one_m_b2
    m_new += den
    xp.multiply(m_new, inv_bc, out=den)
    xp.sqrt(den, out=den)
    den += eps32
    g *= lr32
    g /= den
    return xp.add(g, p, out=out_p), m_new


def rmsprop_step(params, moments, grads, lr, t, beta2, epsilon, bk):
    """Clip every gradient entry to [-1, 1] and take one bias-corrected RMSprop ascent step.

    p <- p + lr * g / (epsilon + sqrt(m_t / (1 - beta2^t))),  m_t = beta2 m_{t-1} + (1 - beta2) g^2.

    Parameters
    ----------
    params, moments, grads : dicts with the same keys
    t : int
        1-based step number (for the bias correction).

    Returns
    -------
    (new_params, new_moments) : dicts; ``params`` and ``moments`` are not modified, the arrays of
    ``grads`` are overwritten (they are temporaries of :func:`gradients`).
    """
    consts = _rmsprop_constants(lr, t, beta2, epsilon)
    new_p, new_m = {}, {}
    for k, p in params.items():
        new_p[k], new_m[k] = rmsprop_array(p, moments[k], grads[k], consts, bk)
    return new_p, new_m


def bound_hidden(params, bk):
    """The reference's bounds on the dReLU shape: |eta| <= ETA_MAX and the jump <= JUMP_MAX.

    In the reference's parameterisation gp = gamma/(1 + eta), gm = gamma/(1 - eta),
    tp = theta + delta/sqrt(1 + eta), tm = -theta + delta/sqrt(1 - eta), i.e. gamma =
    2/(1/gp + 1/gm) (the harmonic mean), eta = (gm - gp)/(gm + gp) (so gm/gp <= 39 at
    |eta| = 0.95), delta = (tp + tm)/(1/sqrt(1 + eta) + 1/sqrt(1 - eta)), theta = tp - delta /
    sqrt(1 + eta). Like the reference:

    * eta is clipped to [-ETA_MAX, ETA_MAX] with gamma, theta and delta held, and gp, gm, tp, tm
      recomputed from them;
    * gamma is raised (gp and gm multiplied by one factor; eta, theta, delta and so tp, tm
      held) to at least max(-delta, 0) (sqrt(1 + eta) + sqrt(1 - eta)) / JUMP_MAX. A negative
      delta (tp + tm < 0) makes the unit bistable; the bound caps the jump of h between its two
      branches at about JUMP_MAX (for eta = 0 the zero-temperature jump is -(tp + tm)/gamma), in
      the units of a normalised h (Var(h) ~ 1).

    Units within both bounds keep their parameters bit for bit. Returns a new dict.
    """
    xp = bk.xp
    gp, gm, tp, tm = _hidden(params)
    one = np.float32(1.0)
    ip, im = one / gp, one / gm
    gamma = np.float32(2.0) / (ip + im)
    eta = (ip - im) / (ip + im)
    sp, sm = xp.sqrt(one + eta), xp.sqrt(one - eta)
    delta = (tp + tm) / (one / sp + one / sm)
    theta = tp - delta / sp
    clip = xp.abs(eta) > np.float32(ETA_MAX)
    eta_c = xp.clip(eta, np.float32(-ETA_MAX), np.float32(ETA_MAX))
    sp_c, sm_c = xp.sqrt(one + eta_c), xp.sqrt(one - eta_c)
    gp = xp.where(clip, gamma / (one + eta_c), gp)
    gm = xp.where(clip, gamma / (one - eta_c), gm)
    tp = xp.where(clip, theta + delta / sp_c, tp)
    tm = xp.where(clip, -theta + delta / sm_c, tm)
    floor = xp.maximum(-delta, np.float32(0.0)) * ((sp_c + sm_c) / np.float32(JUMP_MAX))
    jump = gamma < floor
    factor = xp.where(jump, floor / gamma, one)
    out = dict(params)
    out["gamma_plus"] = xp.where(jump, gp * factor, gp)
    out["gamma_minus"] = xp.where(jump, gm * factor, gm)
    out["theta_plus"] = tp
    out["theta_minus"] = tm
    return out


def apply_constraints(params, bk):
    """:func:`bound_hidden`, then gp, gm (and the visible gamma) >= GAMMA_MIN. Returns a new
    dict."""
    xp = bk.xp
    out = bound_hidden(params, bk)
    for k in ("gamma_plus", "gamma_minus", "visible_gamma"):
        if k in out:
            out[k] = xp.maximum(out[k], np.float32(GAMMA_MIN))
    return out


def centre_thresholds(params, W_old, data_mean, bk):
    """Mean centring: shift tp by +Delta and tm by -Delta, Delta = (W_new - W_old) <v>_data."""
    return shift_thresholds(params, params["weights"] @ data_mean - W_old @ data_mean)


def shift_thresholds(params, delta):
    """tp + delta and tm - delta (the mean centring for a given Delta (M,)). Returns a new dict."""
    out = dict(params)
    out["theta_plus"] = params["theta_plus"] + delta
    out["theta_minus"] = params["theta_minus"] - delta
    return out


def rescale_hidden(params, moments, s2, bk):
    """Apply the scale gauge h -> h / s per hidden unit (P(v) is unchanged).

    w -> s w, (gp, gm) -> s^2 (gp, gm), (tp, tm) -> s (tp, tm); the RMSprop moments follow
    (gradients scale as 1/s for w, tp, tm and 1/s^2 for gp, gm).

    Parameters
    ----------
    s2 : (M,) backend array of s^2.
    """
    s = bk.xp.sqrt(s2)
    p, m = rescale_hidden_units(params, moments, s, s2)
    p["weights"] = params["weights"] * s[:, None]
    m["weights"] = moments["weights"] / s2[:, None]
    return p, m


def rescale_hidden_units(params, moments, s, s2):
    """The per-unit vectors' part of :func:`rescale_hidden` (``weights`` left as they are), given
    s and s^2. Returns new dicts."""
    p, m = dict(params), dict(moments)
    for k in ("gamma_plus", "gamma_minus"):
        p[k] = params[k] * s2
        m[k] = moments[k] / (s2 * s2)
    for k in ("theta_plus", "theta_minus"):
        p[k] = params[k] * s
        m[k] = moments[k] / s2
    return p, m


def normalisation_scale(var_h, rate, bk):
    """s^2 = Var(h)^rate, clipped to [SCALE_STEP, 1 / SCALE_STEP] (see the module docstring)."""
    xp = bk.xp
    v = xp.clip(var_h, np.float32(1e-8), np.float32(1e8))
    return xp.clip(v ** np.float32(rate), np.float32(SCALE_STEP), np.float32(1.0 / SCALE_STEP))


#: On the CPU the weights' part of an update (:func:`weights_step`) goes through the rows in
#: chunks of about this many bytes per array, so that a chunk of the weights, its moments, its
#: gradient and the temporaries stay in a core's L2 cache through the ~20 elementwise passes.
WEIGHT_CHUNK_BYTES = 1 << 20


def weight_chunks(M, N, bk):
    """Row ranges ``[(a, b), ...]`` of the (M, N) weights for :func:`weights_step`: chunks of
    about :data:`WEIGHT_CHUNK_BYTES` of float32 on the CPU, the whole array on a device."""
    if bk.is_device:
        return [(0, M)]
    r = max(1, WEIGHT_CHUNK_BYTES // (4 * max(int(N), 1)))
    return [(a, min(a + r, M)) for a in range(0, M, r)]


def weights_step(W, m, gW, s2, data_mean, consts, cfg, bk, executor=None):
    """The weights' part of one update: penalty, clipped RMSprop step, mean centring, scale gauge.

    Per entry the same floating-point operations, in the same order, as subtracting
    :func:`penalty_gradient` from the gradient, :func:`rmsprop_step`, the Delta of
    :func:`centre_thresholds` and the weights of :func:`rescale_hidden`. Every hidden unit's row
    is independent of the others (the l2l1 penalty couples a row's entries only), so on the CPU
    the rows go in chunks (:func:`weight_chunks`) that stay in cache through all these passes,
    split into ``cfg.n_groups`` contiguous parts run in parallel threads when ``executor`` is
    given (the same numbers without it).

    Parameters
    ----------
    W, m : (M, N)
        Weights and their RMSprop average (not modified).
    gW : (M, N)
        The weights' log-likelihood gradient without the penalty (overwritten).
    s2 : (M,)
        s^2 of the scale gauge (:func:`normalisation_scale`).
    data_mean : (N,)
        <v> on the training data.
    consts : tuple
        :func:`_rmsprop_constants` of this update.

    Returns
    -------
    W_new, m_new : (M, N)
    delta : (M,)
        (W_new - W) @ data_mean before the scale gauge, for :func:`shift_thresholds`.
    """
    xp = bk.xp
    M, N = W.shape
    W_new, m_new = xp.empty_like(W), xp.empty_like(m)
    delta = xp.empty((M,), dtype=W.dtype)
    s = xp.sqrt(s2)

    def run(chunk):
        for a, b in chunk:
            g = gW[a:b]
            if cfg.lam > 0:
                g -= penalty_gradient(W[a:b], cfg.penalty, cfg.lam, bk)
            p, mm = rmsprop_array(W[a:b], m[a:b], g, consts, bk, W_new[a:b], m_new[a:b])
            delta[a:b] = p @ data_mean - W[a:b] @ data_mean
            p *= s[a:b, None]
            mm /= s2[a:b, None]

    chunks = weight_chunks(M, N, bk)
    G = max(1, min(int(cfg.n_groups), len(chunks)))
    parts = [chunks[g * len(chunks) // G : (g + 1) * len(chunks) // G] for g in range(G)]
    list(executor.map(run, parts) if executor is not None and G > 1 else map(run, parts))
    return W_new, m_new, delta


def pcd_update(params, moments, chains, batch, moments_data, update, cfg, bk, executor=None):
    """One PCD update: Gibbs, gradients (with the normalisation term), step.

    The same arithmetic as :func:`gradients`, :func:`rmsprop_step`, :func:`centre_thresholds`,
    :func:`rescale_hidden` and :func:`apply_constraints` in turn, with the weights' share done
    by :func:`weights_step` (cache-sized chunks, in parallel on the CPU).

    Parameters
    ----------
    params, moments : dicts of backend arrays
    chains : (C, N) backend array, persistent chains
    batch : (B, N) backend array, data minibatch
    moments_data : dict of backend arrays (full training set ``mean``, ``sq_mean``)
    update : int
        0-based number of this update: selects the learning rate and the random stream(s)
        ``bk.rng(cfg.seed, STREAM_GIBBS, update[, group])``.
    cfg : TrainConfig
    executor : concurrent.futures.Executor, optional
        Runs the chain groups of :func:`advance_chains` and the parts of :func:`gradients` and
        :func:`weights_step` in parallel (same result without it).

    Returns
    -------
    (params, moments, chains) : the new state; the inputs are not modified.
    """
    WT = weights_t(params, bk)
    chains = advance_chains(params, chains, update, cfg, bk, executor, WT)
    grads, var_h = gradients(
        params, batch, chains, moments_data, cfg, bk, WT, executor, penalise=False
    )
    new_p, new_m = apply_gradients(
        params, moments, grads, var_h, moments_data, update, cfg, bk, executor
    )
    return new_p, new_m, chains


def apply_gradients(params, moments, grads, var_h, moments_data, update, cfg, bk, executor=None):
    """The step of update ``update`` from its gradients: penalty, clipped RMSprop, mean
    centring, scale gauge, bounds (:func:`pcd_update` after :func:`gradients`).

    Parameters
    ----------
    grads, var_h
        :func:`gradients` with ``penalise=False`` (its arrays are overwritten).

    Returns
    -------
    (params, moments) : new dicts.
    """
    lr = learning_rate(
        update, cfg.n_updates, cfg.learning_rate, cfg.lr_final_ratio, cfg.decay_after
    )
    consts = _rmsprop_constants(lr, int(update) + 1, cfg.beta2, cfg.epsilon)
    s2 = normalisation_scale(var_h, 0.25 * lr / cfg.learning_rate, bk)
    W, mW, delta = weights_step(
        params["weights"],
        moments["weights"],
        grads.pop("weights"),
        s2,
        moments_data["mean"],
        consts,
        cfg,
        bk,
        executor,
    )
    new_p, new_m = {"weights": W}, {"weights": mW}
    for k, p in params.items():
        if k != "weights":
            new_p[k], new_m[k] = rmsprop_array(p, moments[k], grads[k], consts, bk)
    new_p = shift_thresholds(new_p, delta)
    new_p, new_m = rescale_hidden_units(new_p, new_m, bk.xp.sqrt(s2), s2)
    new_p = apply_constraints(new_p, bk)
    return {k: new_p[k] for k in params}, {k: new_m[k] for k in params}


def sign_gauge(params, bk):
    """Flip every hidden unit whose weights sum to a negative number (docs/model.md §1, "Sign gauge").

    w_mu -> -w_mu, (gp, tp) <-> (gm, tm); P(v) is unchanged. Returns a new dict.
    """
    xp = bk.xp
    flip = xp.sum(params["weights"], axis=1) < 0
    out = dict(params)
    out["weights"] = xp.where(flip[:, None], -params["weights"], params["weights"])
    for a, b in (("gamma_plus", "gamma_minus"), ("theta_plus", "theta_minus")):
        out[a] = xp.where(flip, params[b], params[a])
        out[b] = xp.where(flip, params[a], params[b])
    return out


def params_finite(params, bk):
    """Backend boolean scalar: every parameter entry is finite (no host synchronisation)."""
    xp = bk.xp
    ok = None
    for v in params.values():
        f = xp.all(xp.isfinite(v))
        ok = f if ok is None else xp.logical_and(ok, f)
    return ok


def hidden_mean_var(params, X, bk, chunk=1024):
    """Mean over the rows of X of E[h|v] and of Var(h|v) (c_mu), each (M,), computed in chunks."""
    xp = bk.xp
    M = params["weights"].shape[0]
    s_mean = xp.zeros(M, dtype=np.float32)
    s_var = xp.zeros(M, dtype=np.float32)
    for a in range(0, X.shape[0], chunk):
        I = hidden_inputs(params, X[a : a + chunk])
        m, v = units.drelu_mean_var(I, *_hidden(params), bk)
        s_mean = s_mean + m.sum(axis=0)
        s_var = s_var + v.sum(axis=0)
    n = np.float32(1.0 / max(X.shape[0], 1))
    return s_mean * n, s_var * n


def reconstruction_error(params, V, visible, bk):
    """Mean squared error between V and E[v | E[h|v]] (backend scalar): a cheap health figure."""
    I = hidden_inputs(params, V)
    H = units.drelu_mean(I, *_hidden(params), bk)
    R = mean_visibles(params, H, visible, bk)
    return ((V - R) ** 2).mean()
