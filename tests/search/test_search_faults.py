"""Fault tolerance: a worker node lost mid-trial, a driver SIGKILLed mid-study, loopback binding.

(A study submitted with ``ray job submit`` to a ``ray start --head`` cluster is tested by
``tests/test_multinode.py``, which runs these same search commands on a real multi-node cluster.)

Each test runs its own Ray in a subprocess (a cluster cannot coexist with the shared session in one
process) and tags every process it starts through an environment variable, so it can check that
nothing is left behind and kill, by PID, only what it started. ``ray stop`` is never used.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from search_helpers import (
    kill_tagged,
    lingering_tagged,
    raysearch_cmd,
    tagged_env,
    tagged_processes,
    write_study,
)

from raysearch.search import load_results
from raysearch.search.monitoring import DIVERGED_VALUE

psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow

# long enough to be caught mid-trial (about 8 s of training per trial on one core: both trials
# must still be running when the second one has written its first checkpoint, even when its worker
# process starts a few seconds after the first), small enough for CI
UPDATES, EVERY = 2000, 100
SLOW = dict(model={"n_updates": UPDATES, "n_gibbs": 25}, evaluation={"report_every": EVERY})
FAST_HEALTH = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_failure_threshold": "2",
    "RAY_health_check_timeout_ms": "1000",
}


def _in_flight(exp_dir: Path) -> list[Path]:
    """Trial dirs that hold at least one checkpoint and no model file yet."""
    done = {p.stem for p in (exp_dir / "models").glob("*.h5")}
    return [
        d
        for d in sorted(exp_dir.glob("crbm_trial_*"))
        if any(d.glob("checkpoint_*"))
        and not any(d.name.startswith(f"crbm_trial_{t}") for t in done)
    ]


def _checkpointed_trials(exp_dir: Path) -> int:
    return len(_in_flight(exp_dir))


def _wait(predicate, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(
                f"process ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _assert_continued(hist, trial_ids, every):
    """Every trial's reports go strictly up in updates (nothing redone from scratch)."""
    for tid in trial_ids:
        ups = hist.loc[hist["trial_id"] == tid, "updates"].tolist()
        assert ups == sorted(set(ups)), (tid, ups)
        assert ups[-1] == UPDATES and ups[0] == every, (tid, ups)


CLUSTER_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import ray
    from ray.cluster_utils import Cluster
    from raysearch.search import load_study, run_study

    study = load_study(sys.argv[1])
    exp_dir = Path(study.run.storage_path) / study.name
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = cluster.add_node(num_cpus=2, resources={"wslot": 2})
    ray.init(address=cluster.address)
    out = {}
    def fit():
        try:
            out["num_errors"] = run_study(study).num_errors
        except BaseException as exc:
            out["error"] = repr(exc)
    t = threading.Thread(target=fit)
    t.start()
    def in_flight():
        done = {p.stem for p in (exp_dir / "models").glob("*.h5")}
        return sum(1 for d in exp_dir.glob("crbm_trial_*") if any(d.glob("checkpoint_*"))
                   and not any(t in d.name for t in done))
    deadline = time.monotonic() + 120
    while in_flight() < 2 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.2)
    out["in_flight_at_kill"] = in_flight()
    cluster.remove_node(worker, allow_graceful=False)   # the node dies mid-trial
    time.sleep(1.0)
    cluster.add_node(num_cpus=2, resources={"wslot": 2})  # main thread: installs signal handlers
    t.join(timeout=240)
    out["alive"] = t.is_alive()
    ray.shutdown()
    cluster.shutdown()
    print("RESULT" + json.dumps(out))
""")


def test_worker_node_lost_mid_trial_trials_continue_from_checkpoints(tmp_path):
    """Two "nodes" (ray.cluster_utils.Cluster): the worker running both trials is removed
    mid-trial and a new one added; both trials finish and their update count never restarts."""
    study = write_study(
        tmp_path,
        filename="cluster.yaml",
        **{
            "name": "cluster",
            "search": {"mode": "grid", "lam": [0.001, 0.01]},
            "resources": {"cpu": 1, "custom": {"wslot": 1}},
            **SLOW,
        },
    )
    script = tmp_path / "cluster_chaos.py"
    script.write_text(CLUSTER_SCRIPT)
    env, tag = tagged_env(tmp_path, **FAST_HEALTH)
    try:
        res = subprocess.run(
            [sys.executable, str(script), str(study)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        kill_tagged(tag)  # Cluster.shutdown can leave agents behind: kill what we started, by PID
        leftovers = [p.pid for p in tagged_processes(tag)]
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    out = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT"))[6:])
    assert out.get("num_errors") == 0 and not out["alive"], out
    assert out["in_flight_at_kill"] == 2, out
    assert leftovers == [], f"Ray processes left running by the cluster: {leftovers}"
    exp_dir = tmp_path / "results" / "cluster"
    df = load_results(exp_dir)
    assert len(df) == 2 and df["finished"].all() and (df["updates"] == UPDATES).all()
    assert (df["resumed_at"] >= EVERY).all(), df[["trial_id", "resumed_at"]]  # from a checkpoint
    hist = load_results(exp_dir, history=True)
    _assert_continued(hist, df["trial_id"], EVERY)
    for tid in df["trial_id"]:  # the trial really moved to another node
        nodes = hist.loc[hist["trial_id"] == tid, "node_id"]
        assert nodes.iloc[0] != nodes.iloc[-1], nodes.tolist()


def _listening(tag) -> list[tuple[str, int, str]]:
    found = []
    procs = {p.pid: p for p in tagged_processes(tag)}
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            found.append((c.laddr.ip, c.laddr.port, procs[c.pid].name()))
    return found


def _is_loopback(ip: str) -> bool:
    ip = ip.removeprefix("::ffff:")
    return ipaddress.ip_address(ip).is_loopback


def test_local_run_loopback_sigkill_then_resume(tmp_path):
    """``raysearch run`` starts Ray with every port and the dashboard on 127.0.0.1 and token auth on;
    its driver is SIGKILLed mid-study; ``raysearch resume`` completes the study: no trial lost or
    duplicated, the in-flight trials continue from their checkpoints, no Ray process left."""
    study = write_study(
        tmp_path,
        filename="killme.yaml",
        **{"name": "killme", "search": {"num_samples": 3, "max_concurrent": 2}, **SLOW},
    )
    exp_dir = tmp_path / "results" / "killme"
    env, tag = tagged_env(tmp_path, **FAST_HEALTH)
    env.pop("RAY_AUTH_MODE", None)  # the default: a new local instance turns token auth on
    log = open(tmp_path / "run.log", "w+")
    proc = subprocess.Popen(
        raysearch_cmd("run", str(study)),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait(lambda: _checkpointed_trials(exp_dir) >= 2, 150, "two trials with checkpoints")
        # ports: everything the launch listens on is loopback, the dashboard among them
        sockets = _listening(tag)
        assert sockets and all(_is_loopback(ip) for ip, _, _ in sockets), sockets
        text = (tmp_path / "run.log").read_text()
        url = next(
            w
            for ln in text.splitlines()
            if ln.startswith("Ray dashboard:")
            for w in ln.split()
            if w.startswith("http")
        )
        assert url.startswith("http://127.0.0.1:")
        with pytest.raises(urllib.error.HTTPError) as denied:  # token auth is on
            urllib.request.urlopen(f"{url}/api/version", timeout=10)
        assert denied.value.code == 401
        token = (Path(env["HOME"]) / ".ray" / "auth_token").read_text().strip()
        req = urllib.request.Request(
            f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}
        )
        assert urllib.request.urlopen(req, timeout=10).status == 200
        os.kill(proc.pid, signal.SIGKILL)  # the driver dies mid-study
        proc.wait(timeout=10)
        time.sleep(1.0)
    finally:
        kill_tagged(tag)  # orphaned Ray processes of that launch, by PID
        log.close()
    before = load_results(exp_dir) if any(exp_dir.glob("experiment_state-*.json")) else None
    assert before is None or not before["finished"].all()
    # The race CI once hit: Tune deletes a trial's older checkpoint (num_to_keep=1) when a newer
    # one arrives and snapshots its experiment state a moment later; a driver killed in between
    # leaves a state naming a deleted checkpoint. Make it happen for one in-flight trial: only
    # its newest checkpoint is kept (workers go on checkpointing for a moment after the driver
    # dies, so there may be several) and moves up one index, so the one Tune's state names is gone.
    # (the in-flight trial with the most checkpoints: its first one is surely in Tune's state)
    raced = max(_in_flight(exp_dir), key=lambda d: max(p.name for p in d.glob("checkpoint_*")))
    *older, newest = sorted(raced.glob("checkpoint_*"))
    for d in older:
        shutil.rmtree(d)
    newest.rename(raced / f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}")
    raced_at = json.loads(
        (
            raced / f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}" / "progress.json"
        ).read_text()
    )["updates"]

    res = subprocess.run(
        raysearch_cmd("resume", str(exp_dir)), env=env, capture_output=True, text=True, timeout=240
    )
    left = lingering_tagged(tag)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "was deleted before the driver stopped; restored it from" in res.stderr, res.stderr[
        -3000:
    ]
    assert "Best lambda:" in res.stdout
    assert left == [], f"Ray processes left running after resume: {left}"
    df = load_results(exp_dir)
    assert len(df) == 3 and df["trial_id"].is_unique, df
    assert df["finished"].all() and (df["updates"] == UPDATES).all()
    assert (df["status"] == "TERMINATED").all(), df[["trial_id", "status"]]
    assert (df["resumed_at"].fillna(0) >= EVERY).sum() >= 2, df[["trial_id", "resumed_at"]]
    raced_row = df[[raced.name.startswith(f"crbm_trial_{t}_") for t in df["trial_id"]]]
    assert raced_row["resumed_at"].tolist() == [raced_at], (raced_row, raced_at)
    hist = load_results(exp_dir, history=True)
    _assert_continued(hist, df["trial_id"], EVERY)
    import optuna

    trials = optuna.load_study(study_name="killme", storage=f"sqlite:///{exp_dir}/optuna.db").trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3, states
    # the default objective; a bad fit's (inf) reaches Optuna as DIVERGED_VALUE
    expected = np.where(np.isfinite(df["max_nrmse"]), df["max_nrmse"], DIVERGED_VALUE)
    assert np.allclose(
        sorted(t.value for t in trials if t.state.name == "COMPLETE"), sorted(expected)
    )


def test_sigint_run_exits_nonzero_then_resumed_results_show_every_trial_finished(tmp_path):
    """Ctrl+C (SIGINT) during ``raysearch run``: Tune stops and saves, and the command exits 3
    (not 0) and prints ``raysearch resume DIR``, so ``run && analyze`` does not go on with a
    partial study. ``raysearch resume`` finishes it, and ``raysearch results`` then shows every
    trial TERMINATED and finished (Tune uploads the old and the new experiment state ~1 ms apart;
    picking the state by modification time once showed finished trials as RUNNING)."""
    study = write_study(
        tmp_path,
        filename="intr.yaml",
        **{"name": "intr", "search": {"num_samples": 3, "max_concurrent": 2}, **SLOW},
    )
    exp_dir = tmp_path / "results" / "intr"
    env, tag = tagged_env(tmp_path)
    proc = subprocess.Popen(
        raysearch_cmd("run", str(study)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        _wait(lambda: _checkpointed_trials(exp_dir) >= 1, 150, "a trial with a checkpoint", proc)
        os.kill(proc.pid, signal.SIGINT)  # once: Tune stops gracefully and saves
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        left = lingering_tagged(tag)
    assert proc.returncode == 3, out[-3000:]
    assert f"raysearch resume {exp_dir}" in out, out[-3000:]
    assert "did not finish" in out
    assert left == [], f"Ray processes left running after the interrupted run: {left}"
    before = load_results(exp_dir)
    assert not before["finished"].all() or len(before) < 3

    res = subprocess.run(
        raysearch_cmd("resume", str(exp_dir)), env=env, capture_output=True, text=True, timeout=300
    )
    left = lingering_tagged(tag)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "did not finish" not in res.stdout + res.stderr
    assert left == [], f"Ray processes left running after resume: {left}"
    shown = subprocess.run(
        raysearch_cmd("results", str(exp_dir)), env=env, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "RUNNING" not in shown.stdout and "did not finish" not in shown.stdout, shown.stdout
    df = load_results(exp_dir)
    assert len(df) == 3 and df["trial_id"].is_unique
    assert (df["status"] == "TERMINATED").all(), df[["trial_id", "status"]]
    assert df["finished"].all() and (df["updates"] == UPDATES).all()
    table = shown.stdout.split("\n\n")[0]
    assert (
        sum(
            ln.split()[0] in set(df["trial_id"]) and "TERMINATED" in ln
            for ln in table.splitlines()[1:]
        )
        == 3
    ), table
