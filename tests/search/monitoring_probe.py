"""Run a tiny study the way ``raysearch run`` does, on a new local Ray instance with the
dashboard and token authentication on, and record what a user would see (used by
tests/search/test_monitoring.py in a subprocess, so that the test session's own Ray is not
touched).

    python monitoring_probe.py STUDY.yaml OUT.json

While the study runs, a thread scrapes the node's Prometheus endpoint every second and keeps the
``raysearch`` lines; afterwards the Jobs and State APIs are read through the dashboard (with and
without the token) and everything is written to OUT.json. The console of the run is this
process's stdout.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request


def _get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def main(study_path: str, out_path: str) -> int:
    import ray

    from raysearch.cli import main as cli_main
    from raysearch.search.config import load_study
    from raysearch.search.monitoring import job_metadata
    from raysearch.search.tuner import connect_ray, experiment_dir

    study = load_study(study_path)
    exp_dir = experiment_dir(study)
    started, url = connect_ray(metadata=job_metadata(study, exp_dir))
    assert started and url, "the probe must start its own Ray instance"
    port = ray._private.worker.global_worker.node.metrics_export_port
    scraped, stop = [], threading.Event()

    def scrape():
        while not stop.is_set():
            status, text = _get(f"http://127.0.0.1:{port}/metrics")
            if status == 200:
                scraped.extend(
                    ln for ln in text.splitlines() if ln.startswith("ray_raysearch_trial_")
                )
            stop.wait(1.0)

    th = threading.Thread(target=scrape, daemon=True)
    th.start()
    try:
        rc = cli_main(["run", study_path])
        time.sleep(3.0)  # one more report interval of the metrics agent
        stop.set()
        th.join()
        token_file = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
        token = open(token_file).read().strip() if os.path.exists(token_file) else None
        jobs_status, jobs = _get(f"{url}/api/jobs/", token)
        noauth_status, _ = _get(f"{url}/api/jobs/")
        actors_status, actors = _get(f"{url}/api/v0/actors?detail=1&limit=100", token)
        tasks_status, tasks = _get(f"{url}/api/v0/tasks?detail=1&limit=200", token)
        out = {
            "rc": rc,
            "dashboard_url": url,
            "metrics_port": port,
            "token": bool(token),
            "experiment_dir": exp_dir,
            "scraped": sorted(set(scraped)),
            "jobs_status": jobs_status,
            "jobs": json.loads(jobs) if jobs else None,
            "noauth_status": noauth_status,
            "actors_status": actors_status,
            "actors": json.loads(actors) if actors else None,
            "tasks_status": tasks_status,
            "tasks": json.loads(tasks) if tasks else None,
        }
        with open(out_path, "w") as fh:
            json.dump(out, fh)
    finally:
        stop.set()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
