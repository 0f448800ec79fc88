"""Helpers: experiment directories for the analyzer tests, laid out as raysearch writes them (raysearch.crbm.io, raysearch.search.results).

Model files are written with ``CRBM.save(path, dataset=...)`` (so /units exists) plus an
/evaluation group (metric attrs, {stat}/{train,test,model} vectors); each trial gets a Tune-style
trial directory with params.json and result.json so that ``load_results`` finds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STATS = ("v", "h", "vh", "vv", "hh")


def write_model(path, W, c, dataset, lam=0.01, seed=0, metrics=None, stats=None):
    import h5py

    from raysearch.crbm import CRBM

    M, N = W.shape
    m = CRBM(n_hidden=M, lam=lam, seed=seed, backend="numpy")
    m.weights_ = np.asarray(W, np.float32)
    m.fields_ = np.zeros(N, np.float32)
    for a in ("gamma_plus_", "gamma_minus_"):
        setattr(m, a, np.ones(M, np.float32))
    for a in ("theta_plus_", "theta_minus_"):
        setattr(m, a, np.zeros(M, np.float32))
    m.hidden_var_ = np.asarray(c, np.float32)
    m.save(path, dataset=dataset)
    with h5py.File(path, "a") as f:
        g = f.require_group("evaluation")
        for k, v in (metrics or {}).items():
            g.attrs[k] = v
        for s, parts in (stats or {}).items():
            sg = g.require_group(s)
            for p, arr in parts.items():
                sg.create_dataset(p, data=np.asarray(arr))


def fake_stats(rng, noise):
    out = {}
    for s, n in zip(STATS, (30, 8, 60, 90, 20)):
        test = rng.random(n)
        out[s] = {
            "train": test + 0.01 * rng.normal(size=n),
            "test": test,
            "model": test + noise * rng.normal(size=n),
        }
    return out


def make_experiment(root, models, dataset, recording="fish0", with_models=True):
    """models: list of dict(W, c, lam, seed, bad, mean_nrmse). Returns the experiment dir."""
    exp = Path(root)
    (exp / "models").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    for i, spec in enumerate(models):
        tid = f"abcde_{i:05d}"
        tdir = exp / f"crbm_trial_{tid}_lam={spec['lam']:.3g}"
        tdir.mkdir()
        cfg = {
            "lam": spec["lam"],
            "seed": spec["seed"],
            "recording": spec.get("recording", recording),
        }
        (tdir / "params.json").write_text(json.dumps(cfg))
        (tdir / "result.json").write_text(
            json.dumps({"trial_id": tid, "training_iteration": 1, **cfg}) + "\n"
        )
        if not with_models:
            continue
        mn = spec.get("mean_nrmse", 0.3)
        metrics = {f"nrmse_{s}": mn for s in STATS}
        metrics.update(
            mean_nrmse=mn,
            max_nrmse=mn,
            bad=bool(spec.get("bad", False)),
            sparsity=0.5,
            weight_density=spec.get("weight_density", 0.5),
            updates=100,
            seconds=1.0,
        )
        if "bad_reason" in spec:
            metrics["bad_reason"] = spec["bad_reason"]
        write_model(
            exp / "models" / f"{tid}.h5",
            spec["W"],
            spec["c"],
            dataset,
            lam=spec["lam"],
            seed=spec["seed"],
            metrics=metrics,
            stats=fake_stats(rng, 0.3 if spec.get("bad") else 0.02),
        )
    return exp


def family_specs(rng, n, m=8, per_family=4):
    """Two families of models (weights around two sparse structures), lambda follows family."""
    bases = [rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.15) for _ in range(2)]
    specs = []
    for f, base in enumerate(bases):
        for j in range(per_family):
            W = base + 0.3 * rng.normal(size=(m, n)) * (rng.random((m, n)) < 0.3)
            W = W[rng.permutation(m)]
            specs.append(
                {
                    "W": W,
                    "c": rng.uniform(0.5, 1.5, m),
                    "lam": (1e-3 if f == 0 else 1e-1) * (1 + j),
                    "seed": j,
                    "bad": f == 1 and j == 0,
                    "mean_nrmse": 0.2 + 0.1 * f + 0.01 * j,
                    "family": f,
                }
            )
    return specs
