"""Helpers of the search tests: tiny studies (a few seconds each on 2 cores), tagged subprocesses."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from raysearch.search.config import study_from_dict

TINY = {
    "name": "tiny",
    "recordings": [{"name": "fish", "synthetic": {"n_neurons": 60, "n_frames": 600, "seed": 0}}],
    "preprocessing": {"n_segments": 5, "n_test_segments": 1, "test_segments": [2]},
    "model": {"n_hidden": 5, "n_updates": 40, "batch_size": 50, "n_gibbs": 2},
    "search": {
        "mode": "optuna",
        "lam": {"low": 1e-4, "high": 1.0},
        "num_samples": 3,
        "max_concurrent": 2,
        "sampler_seed": 0,
    },
    "evaluation": {
        "report_every": 10,
        "during": {"n_chains": 20, "n_burnin": 20, "n_samples": 5, "n_between": 5},
        "final": {"n_chains": 40, "n_burnin": 50, "n_samples": 10, "n_between": 5},
    },
    "run": {"verbose": 0, "max_failures": 3},
}


def tiny_dict(tmp_path, **sections) -> dict:
    """The tiny study with sections updated (``search={...}`` merges into ``search``)."""
    d = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key].update(value)
        else:
            d[key] = value
    d["run"]["storage_path"] = str(tmp_path / "results")
    return d


def tiny_study(tmp_path, **sections):
    return study_from_dict(tiny_dict(tmp_path, **sections))


def write_study(tmp_path, filename="study.yaml", **sections) -> Path:
    p = tmp_path / filename
    p.write_text(yaml.safe_dump(tiny_dict(tmp_path, **sections)))
    return p


TAG_VAR = "RAYSEARCH_SEARCH_TEST_TAG"


def tagged_env(tmp_path, **extra) -> tuple[dict, str]:
    """Environment for a subprocess whose Ray processes we can find (and kill) by a tag."""
    tag = uuid.uuid4().hex
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env[TAG_VAR] = tag
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env, tag


def tagged_processes(tag: str) -> list:
    import psutil

    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(TAG_VAR) == tag:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return found


def kill_tagged(tag: str) -> list[int]:
    """SIGKILL every process carrying the tag (only ones this test started); return their pids."""
    import psutil

    procs = tagged_processes(tag)
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def lingering_tagged(tag: str, grace: float = 15.0) -> list[str]:
    """Processes carrying the tag that are still running ``grace`` seconds from now (Ray's
    processes exit asynchronously after ``ray.shutdown``); they are then SIGKILLed. Returns
    'pid name' for each of those."""
    import psutil

    _, alive = psutil.wait_procs(tagged_processes(tag), timeout=grace)
    names = []
    for p in alive:
        try:
            names.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    kill_tagged(tag)
    return names


def raysearch_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "raysearch", *args]


def run_cli(*args, env=None, timeout=240) -> subprocess.CompletedProcess:
    """Run ``python -m raysearch ...`` in a subprocess."""
    return subprocess.run(
        raysearch_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout
    )
