"""A real multi-node Ray cluster on 127.0.0.1, without containers.

One head (``ray start --head``, 0 CPUs, so no trial can run there) and two worker nodes
(``ray start --address``), each a separate process tree with its own temp dir, explicit ports and a
custom resource (``node_a`` / ``node_b``). Studies are submitted with ``ray job submit`` exactly as a
user would on a real cluster, and the results are read back from the storage path afterwards.

The harness only ever signals processes it started: every node runs in its own session (process
group) and carries a unique environment tag, and teardown kills that group and any straggler that
still carries the tag. ``ray stop`` is never used (it would kill every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="the harness uses Linux process groups"
    ),
]

psutil = pytest.importorskip(
    "psutil", reason="psutil is needed to find and stop the cluster's processes"
)

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
TAG_VAR = "RAYSEARCH_MULTINODE_TAG"
START_TIMEOUT_S = 45


# --------------------------------------------------------------------------------------------- ports
def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


class _Ports:
    """Hands out distinct free TCP ports (and contiguous ranges) from a random high block."""

    def __init__(self):
        self._used: set[int] = set()
        self._rng = random.Random(os.getpid() ^ time.time_ns())

    def one(self) -> int:
        return self.block(1)

    def block(self, width: int) -> int:
        for _ in range(500):
            base = self._rng.randrange(20000, 60000 - width)
            span = range(base, base + width)
            if any(p in self._used for p in span):
                continue
            if all(_port_free(p) for p in span):
                self._used.update(span)
                return base
        raise RuntimeError(f"no block of {width} free ports found")


# ------------------------------------------------------------------------------------------- cluster
@dataclass
class _Node:
    name: str
    proc: subprocess.Popen
    temp_dir: Path
    log_path: Path
    tag: str
    resources: dict = field(default_factory=dict)


class LocalRayCluster:
    """A head and worker nodes started with ``ray start --block``, each in its own session."""

    def __init__(self, root: Path):
        self.root = root
        self.tag = uuid.uuid4().hex
        self.ports = _Ports()
        self.nodes: dict[str, _Node] = {}
        self._spawned = 0
        self.env = dict(os.environ)
        self.env.pop("RAY_ADDRESS", None)
        # set in-process by a local `raysearch run` earlier in the test session; it makes
        # `ray start --address` refuse to join ("Multi-node Ray clusters are not supported")
        self.env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        self.env.update(
            {
                "RAY_AUTH_MODE": "disabled",  # tests only: the Jobs API then needs no token
                "RAY_USAGE_STATS_ENABLED": "0",
                "PATH": f"{BIN}{os.pathsep}{self.env.get('PATH', '')}",
                # notice a killed worker node within ~2-3 s instead of ~15 s
                "RAY_health_check_period_ms": "1000",
                "RAY_health_check_failure_threshold": "2",
                "RAY_health_check_timeout_ms": "1000",
            }
        )
        self.gcs_port = self.dashboard_port = None

    # -- addresses
    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    # -- starting
    def _node_ports(self) -> list[str]:
        p = self.ports
        lo = p.block(60)
        return [
            "--node-manager-port",
            str(p.one()),
            "--object-manager-port",
            str(p.one()),
            "--dashboard-agent-listen-port",
            str(p.one()),
            "--dashboard-agent-grpc-port",
            str(p.one()),
            "--runtime-env-agent-port",
            str(p.one()),
            "--metrics-export-port",
            str(p.one()),
            "--min-worker-port",
            str(lo),
            "--max-worker-port",
            str(lo + 59),
        ]

    def _spawn(self, name: str, args: list[str], resources: dict) -> _Node:
        temp_dir = Path(tempfile.mkdtemp(prefix=f"rs-{name}-", dir=self.root))
        self._spawned += 1
        log_path = self.root / f"{self._spawned:02d}-{name}.log"
        cmd = [
            RAY,
            "start",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--temp-dir",
            str(temp_dir),
            "--object-store-memory",
            str(80 * 1024**2),
            "--num-gpus",
            "0",
            "--disable-usage-stats",
            *args,
            *self._node_ports(),
        ]
        tag = f"{self.tag}/{self._spawned:02d}-{name}"  # inherited by every process of this node
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd,
                env={**self.env, TAG_VAR: tag},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # no terminal signals from pytest
        node = _Node(name, proc, temp_dir, log_path, tag, resources)
        self.nodes[name] = node
        return node

    def start_head(self) -> None:
        self.gcs_port, self.dashboard_port = self.ports.one(), self.ports.one()
        self._spawn(
            "head",
            [
                "--head",
                "--port",
                str(self.gcs_port),
                "--num-cpus",
                "0",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(self.ports.one()),
            ],
            {},
        )
        self.wait_for(lambda nodes: any(n["is_head_node"] for n in nodes), "the head node")

    def add_workers(self, workers: dict[str, dict], num_cpus: int = 1) -> None:
        """Start worker nodes (name -> custom resources) at once; return when all have joined."""
        before = {n["node_id"] for n in self.alive_nodes()}
        for name, resources in workers.items():
            self._spawn(
                name,
                [
                    "--address",
                    self.gcs_address,
                    "--num-cpus",
                    str(num_cpus),
                    "--resources",
                    json.dumps(resources),
                ],
                resources,
            )

        def joined(nodes):
            new = [n for n in nodes if n["node_id"] not in before]
            return all(
                any(next(iter(r)) in n["resources_total"] for n in new) for r in workers.values()
            )

        self.wait_for(joined, f"workers {sorted(workers)}")

    # -- observing (HTTP state API of the dashboard; the test process never joins the cluster)
    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [
            {
                "node_id": n.node_id,
                "is_head_node": n.is_head_node,
                "resources_total": dict(n.resources_total or {}),
            }
            for n in list_nodes(
                address=self.dashboard_url, detail=True, timeout=10, raise_on_missing_output=False
            )
            if n.state == "ALIVE"
        ]

    def node_ids(self) -> dict[str, str]:
        """Custom resource name -> node id, for the alive worker nodes."""
        out = {}
        for n in self.alive_nodes():
            for res in n["resources_total"]:
                if res.startswith("node_"):
                    out[res] = n["node_id"]
        return out

    def actors(self, class_name: str | None = None) -> list:
        from ray.util.state import list_actors

        filters = [("class_name", "=", class_name)] if class_name else None
        return list_actors(
            address=self.dashboard_url,
            filters=filters,
            limit=1000,
            timeout=10,
            raise_on_missing_output=False,
        )

    def wait_for(self, predicate, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline, last_err = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.proc.poll() is not None:
                    raise RuntimeError(
                        f"`ray start` for {node.name} exited with {node.proc.returncode}:\n"
                        + self.log_tail(node)
                    )
            try:
                if predicate(self.alive_nodes()):
                    return
            except Exception as exc:  # dashboard not up yet
                last_err = exc
            time.sleep(0.5)
        raise TimeoutError(
            f"{what} did not come up within {timeout} s (last error: {last_err})\n"
            + "\n".join(self.log_tail(n) for n in self.nodes.values())
        )

    @staticmethod
    def log_tail(node: _Node, n: int = 25) -> str:
        try:
            lines = node.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return f"--- {node.log_path.name}\n" + "\n".join(lines[-n:])

    # -- jobs
    def submit(
        self, entrypoint: list[str], timeout: float, wait: bool = True
    ) -> subprocess.CompletedProcess | str:
        """``ray job submit`` to the head's Jobs API; returns the finished CLI run (or the id)."""
        sub_id = f"raysearch-test-{uuid.uuid4().hex[:8]}"
        cmd = [
            RAY,
            "job",
            "submit",
            "--address",
            self.dashboard_url,
            "--submission-id",
            sub_id,
            "--log-style",
            "record",
        ]
        if not wait:
            cmd.append("--no-wait")
        cmd += ["--", *entrypoint]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if not wait:
            assert res.returncode == 0, res.stdout + res.stderr
            return sub_id
        return res

    def job_status(self, sub_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return str(JobSubmissionClient(self.dashboard_url).get_job_status(sub_id).value)

    def job_logs(self, sub_id: str) -> str:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url).get_job_logs(sub_id)

    def wait_job(self, sub_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.job_status(sub_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(1)
        raise TimeoutError(
            f"job {sub_id} still {status} after {timeout} s:\n{self.job_logs(sub_id)[-3000:]}"
        )

    # -- stopping
    def _tagged(self, node_tag: str | None = None) -> list:
        """Live processes whose environment carries this cluster's tag (or exactly ``node_tag``).

        Only processes we started (and their descendants) can carry the random tag; psutil's
        ``kill`` checks the process identity, so a recycled PID is never signalled."""
        found = []
        for p in psutil.process_iter(["pid"]):
            try:
                tag = p.environ().get(TAG_VAR, "")
                ours = tag == node_tag if node_tag else tag.startswith(f"{self.tag}/")
                if ours and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return found

    def _kill_tagged(self, node_tag: str | None = None) -> list[str]:
        killed = []
        for p in self._tagged(node_tag):
            try:
                killed.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return killed

    def stop_node(self, name: str, graceful: bool = True, timeout: float = 20) -> list[str]:
        """Stop one node: SIGTERM to its ``ray start --block`` (Ray then stops its own processes),
        then SIGKILL whatever of the node is left; ``graceful=False`` SIGKILLs all of the node's
        processes at once, like a crashed machine. Returns what had to be killed."""
        node = self.nodes.pop(name)
        if graceful and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        killed, deadline = [], time.monotonic() + 10
        while (more := self._kill_tagged(node.tag)) and time.monotonic() < deadline:  # what is left
            killed += more
            time.sleep(0.2)
        node.proc.wait(timeout=10)
        return killed

    def shutdown(self) -> list[str]:
        """Stop every node (workers first), then SIGKILL stragglers carrying this cluster's tag.

        Returns descriptions of processes that had to be killed after the graceful stop."""
        stragglers = []
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            stragglers += self.stop_node(name)
        deadline = time.monotonic() + 10
        while (killed := self._kill_tagged()) and time.monotonic() < deadline:
            stragglers += killed
            time.sleep(0.5)
        return sorted(set(stragglers))


@pytest.fixture(scope="module")
def ray_cluster():
    root = Path(
        tempfile.mkdtemp(prefix="rs-mn-")
    )  # short: Ray's unix socket paths must stay < 108 chars
    cluster = LocalRayCluster(root)
    try:
        cluster.start_head()
        cluster.add_workers({"worker_a": {"node_a": 1}, "worker_b": {"node_b": 1}})
        yield cluster
    finally:
        stragglers = cluster.shutdown()
        left = cluster._tagged()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"processes of the test cluster still running: {[p.pid for p in left]}"
        if stragglers:
            print(f"killed after the graceful stop: {stragglers}")


# --------------------------------------------------------------------------------------------- tests
PROBE = textwrap.dedent("""
    import json, ray
    ray.init()   # RAY_ADDRESS is set by the job supervisor
    @ray.remote(num_cpus=1)
    def where():
        return ray.get_runtime_context().get_node_id()
    out = {r: ray.get(where.options(resources={r: 1}).remote()) for r in ("node_a", "node_b")}
    print("PROBE" + json.dumps(out))
""")


def test_harness_job_reaches_both_workers(ray_cluster):
    """A trivial job submitted with `ray job submit` runs one task on each worker node."""
    nodes = ray_cluster.alive_nodes()
    assert len(nodes) == 3
    head = [n for n in nodes if n["is_head_node"]]
    assert len(head) == 1 and head[0]["resources_total"].get("CPU", 0) == 0
    res = ray_cluster.submit([sys.executable, "-c", PROBE], timeout=90)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("PROBE"))
    placed = json.loads(line[len("PROBE") :])
    assert placed == ray_cluster.node_ids()
    assert placed["node_a"] != placed["node_b"]


# ------------------------------------------------------------------------------------ real studies
N_TRIALS = 4


def _write_study(path: Path, storage: Path, name: str, n_updates: int) -> Path:
    """A small Optuna study (the search helper's format) whose trials each take one worker CPU."""
    study = {
        "name": name,
        "recordings": [
            {"name": "fish", "synthetic": {"n_neurons": 120, "n_frames": 800, "seed": 0}}
        ],
        "preprocessing": {"signal": "spikes"},
        "model": {"n_hidden": 6, "n_updates": n_updates, "batch_size": 50},
        "search": {
            "mode": "optuna",
            "penalty": "l2l1",
            "lam": {"low": 1.0e-4, "high": 1.0e-1},
            "seeds": [0],
            "num_samples": N_TRIALS,
            "max_concurrent": 2,
            "sampler_seed": 0,
        },
        "evaluation": {
            "report_every": max(n_updates // 4, 1),
            "during": {
                "n_chains": 20,
                "n_burnin": 20,
                "n_samples": 5,
                "n_between": 5,
                "max_pairs": 2000,
            },
            "final": {
                "n_chains": 20,
                "n_burnin": 30,
                "n_samples": 5,
                "n_between": 5,
                "max_pairs": 2000,
            },
        },
        "resources": {"cpu": 1, "gpu": 0},
        "run": {"storage_path": str(storage), "max_failures": 3, "verbose": 0},
    }
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def _trial_errors(exp_dir: Path) -> str:
    """The error.txt of every trial (for failure messages)."""
    return "\n".join(
        f"--- {e.parent.name}\n{e.read_text()[-1500:]}" for e in sorted(exp_dir.glob("*/error.txt"))
    )


def _check_results(exp_dir: Path, n_updates: int):
    from raysearch import load_results

    df = load_results(exp_dir)
    assert len(df) == N_TRIALS, df
    assert (df["status"] == "TERMINATED").all(), df[["trial_id", "status"]]
    assert df["finished"].all(), df[["trial_id", "finished", "updates"]]
    assert (df["updates"] == n_updates).all(), df[["trial_id", "updates", "resumed_at"]]
    assert df["mean_nrmse"].notna().all()
    for p in df["model_path"]:
        assert Path(p).is_file() and str(p).startswith(str(exp_dir))
    return df


def _optuna_states(exp_dir: Path, name: str) -> list[str]:
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp_dir / 'optuna.db'}")
    return [t.state.name for t in study.trials]


def test_study_submitted_with_ray_job_lands_on_both_workers(ray_cluster, tmp_path):
    """`ray job submit -- raysearch run STUDY --address auto`: trials on node_a and node_b, results
    and the Optuna study read back from the storage path afterwards (no Ray needed for that)."""
    storage = ray_cluster.root / "shared-storage"
    study = _write_study(tmp_path / "mn.yaml", storage, "mn_spread", n_updates=60)
    workers = ray_cluster.node_ids()
    t0 = time.monotonic()
    res = ray_cluster.submit(
        [str(BIN / "raysearch"), "run", str(study), "--address", "auto"], timeout=240
    )
    elapsed = time.monotonic() - t0
    exp_dir = storage / "mn_spread"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-1000:] + _trial_errors(exp_dir)
    df = _check_results(exp_dir, 60)
    # every trial ran on a worker node (the head has no CPU), and both workers got trials
    assert set(df["node_id"]) <= set(workers.values()), (df["node_id"].tolist(), workers)
    assert set(df["node_id"]) == set(workers.values()), df[["trial_id", "node_id"]]
    assert _optuna_states(exp_dir, "mn_spread") == ["COMPLETE"] * N_TRIALS
    # the CLI reads the same storage, with the cluster irrelevant to it
    csv = tmp_path / "trials.csv"
    cli = subprocess.run(
        [str(BIN / "raysearch"), "results", str(exp_dir), "--csv", str(csv)],
        capture_output=True,
        text=True,
        timeout=120,
        env=ray_cluster.env,
    )
    assert cli.returncode == 0, cli.stderr
    import pandas as pd

    assert sorted(pd.read_csv(csv)["trial_id"].astype(str)) == sorted(df["trial_id"].astype(str))
    print(f"\n4-trial study via ray job submit: {elapsed:.1f} s")


def _wait_for(cond, what: str, timeout: float, every: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def test_worker_killed_mid_study_and_restarted(ray_cluster, tmp_path):
    """Worker A is killed (its whole process group, SIGKILL: a crashed machine) while both workers
    run a trial that has checkpointed; a new worker with the same resources joins. Every trial
    completes, the interrupted one from its checkpoint, and the job succeeds."""
    storage = ray_cluster.root / "shared-storage"
    name, n_updates = "mn_restart", 240
    study = _write_study(tmp_path / "mn.yaml", storage, name, n_updates=n_updates)
    exp_dir = storage / name
    old_a = ray_cluster.node_ids()["node_a"]
    sub_id = ray_cluster.submit(
        [str(BIN / "raysearch"), "run", str(study), "--address", "auto"], timeout=60, wait=False
    )

    def both_running_with_checkpoint():
        models = {p.stem for p in (exp_dir / "models").glob("*.h5")}
        ckpt = {d.parent.name for d in exp_dir.glob("*/checkpoint_*")}
        running = [t for t in ckpt if not any(m in t for m in models)]
        return len(running) >= 2

    try:
        _wait_for(both_running_with_checkpoint, "two trials with a checkpoint", timeout=90)
    except TimeoutError:
        raise AssertionError(
            ray_cluster.job_logs(sub_id)[-3000:] + _trial_errors(exp_dir)
        ) from None
    ray_cluster.stop_node("worker_a", graceful=False)
    ray_cluster.wait_for(
        lambda nodes: old_a not in {n["node_id"] for n in nodes},
        "the head to notice that worker A is gone",
        timeout=30,
    )
    ray_cluster.add_workers({"worker_a": {"node_a": 1}})
    new_a = ray_cluster.node_ids()["node_a"]
    assert new_a != old_a

    status = ray_cluster.wait_job(sub_id, timeout=150)
    logs = ray_cluster.job_logs(sub_id)
    assert status == "SUCCEEDED", logs[-3000:] + _trial_errors(exp_dir)
    df = _check_results(exp_dir, n_updates)
    # the trial that was on the killed worker went on from its checkpoint, not from update 0
    resumed = df[df["resumed_at"].notna()]
    assert len(resumed) >= 1, df[["trial_id", "node_id", "resumed_at", "updates"]]
    assert (resumed["resumed_at"] > 0).all() and (resumed["resumed_at"] < n_updates).all()
    assert _optuna_states(exp_dir, name) == ["COMPLETE"] * N_TRIALS
