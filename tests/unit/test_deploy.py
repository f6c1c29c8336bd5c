"""The deployment files agree with Ray, with the project's CLIs and with each other.

- ray_cluster.yaml passes Ray's own cluster-config validation (the schema Ray ships);
- every job command in ray_cluster.yaml, cluster/ and the README's `ray job submit` lines
  parses with that job's own argument parser and names a script that exists;
- Ray / Python / CUDA versions agree across image tags, KubeRay `rayVersion`, pyproject.toml
  and the installed packages.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import zoneinfo
from pathlib import Path

import pytest
import yaml

import fcn.config
from fcn.config import build_parser

REPO = Path(__file__).resolve().parents[2]
RAY_CLUSTER = REPO / "ray_cluster.yaml"
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
DOCKERFILE = CLUSTER / "Dockerfile"
STACK = CLUSTER / "local" / "stack.sh"

# Script name -> the config class its CLI is generated from (looked up by name, so a class
# that does not exist yet fails the one command that needs it, with its name).
JOB_CONFIGS = {
    "ingest": "IngestConfig",
    "train": "TrainConfig",
    "segment": "SegmentConfig",
    "evaluate": "EvaluateConfig",
    "compare": "CompareConfig",
    "cycle": "CycleConfig",
}
JOB_COMMAND = re.compile(r"\bpython3?\s+(?P<script>\S*jobs/(?P<job>\w+)\.py)(?P<args>.*)", re.S)
RAY_IMAGE = re.compile(r"rayproject/ray(?:-ml)?:(?P<ray>[\d.]+)-py(?P<py>\d+)(?:-cu(?P<cu>\d+))?")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def yaml_documents() -> dict[str, list]:
    files = [RAY_CLUSTER, *sorted(CLUSTER.rglob("*.yaml"))]
    return {str(p.relative_to(REPO)): list(yaml.safe_load_all(p.read_text())) for p in files}


def walk(node, path=""):
    """(path, value) for every scalar in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")
    else:
        yield path, node


def image_workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M)
    return workdir.rstrip("/") + "/"


def readme_submissions() -> list[tuple[str, str]]:
    """`ray job submit ... -- python jobs/X.py ...` commands in the README's code blocks."""
    readme = REPO / "README.md"
    if not readme.exists():
        return []
    found, in_block = [], False
    text = readme.read_text().replace("\\\n", " ")  # join continued shell lines
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_block = not in_block
        elif in_block and "ray job submit" in line and JOB_COMMAND.search(line):
            found.append(("README.md", line.split(" -- ", 1)[-1]))
    return found


def job_commands() -> list[tuple[str, str]]:
    """(where, command) for every job command in the deployment files."""
    commands = []
    for name, documents in yaml_documents().items():
        for document in documents:
            for path, value in walk(document):
                if isinstance(value, str) and JOB_COMMAND.search(value):
                    commands.append((f"{name}:{path}", value))
    return commands + readme_submissions()


# --- Ray's own validation -------------------------------------------------------------------


def test_ray_cluster_yaml_passes_rays_schema():
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(RAY_CLUSTER.read_text())
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_path.read_text()))  # the file as written
    validate_config(prepare_config(config))  # as `ray up` sees it, AWS defaults merged in


def test_ray_cluster_has_cpu_head_and_autoscaling_gpu_and_cpu_workers():
    config = yaml.safe_load(RAY_CLUSTER.read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    cpu = [
        t
        for name, t in types.items()
        if name != config["head_node_type"] and t["resources"].get("GPU", 0) == 0
    ]
    assert gpu and cpu
    for node_type in gpu + cpu:
        assert node_type.get("min_workers", 0) < node_type["max_workers"]  # it autoscales
    assert config["provider"]["type"] == "aws"


# --- job commands ---------------------------------------------------------------------------


def test_every_job_command_parses_and_names_an_existing_script():
    commands = job_commands()
    jobs = {JOB_COMMAND.search(c).group("job") for _, c in commands}
    assert {"train", "segment"} <= jobs, commands  # the RayJob and the RayCronJob at least
    workdir = image_workdir()
    for where, command in commands:
        match = JOB_COMMAND.search(command)
        script = match.group("script")
        local = script[len(workdir) :] if script.startswith(workdir) else script
        assert (REPO / local).is_file(), f"{where}: {script} does not exist in the repository"
        config_class = getattr(fcn.config, JOB_CONFIGS.get(match.group("job"), ""), None)
        assert config_class, f"{where}: no config class for {match.group('job')}.py"
        argv = shlex.split(match.group("args"))
        try:
            build_parser(config_class).parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{where}: {script} rejects {argv} (exit {err.code})")


def test_kuberay_entrypoints_use_the_images_checkout():
    # KubeRay runs the entrypoint on the head pod; the image holds the code at WORKDIR.
    workdir = image_workdir()
    for where, command in job_commands():
        if where.startswith("cluster/kuberay/"):
            assert JOB_COMMAND.search(command).group("script").startswith(workdir), where


# --- versions -------------------------------------------------------------------------------


def all_image_references() -> list[tuple[str, str]]:
    refs = [
        (f"{name}:{path}", value)
        for name, documents in yaml_documents().items()
        for document in documents
        for path, value in walk(document)
        if path.endswith(".image") and isinstance(value, str)
    ]
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            refs.append(("cluster/Dockerfile:FROM", line.split()[1]))
    return refs


def torch_cuda() -> str | None:
    """'130' for a CUDA 13.0 build of torch, read from torch/version.py (importing torch
    would take seconds); None for a CPU build."""
    spec = importlib.util.find_spec("torch")
    text = (Path(spec.origin).parent / "version.py").read_text()
    found = re.search(r"^cuda\b.*=\s*'(\d+)\.(\d+)'", text, re.M)
    return f"{found.group(1)}{found.group(2)}" if found else None


def test_ray_python_and_cuda_versions_agree_everywhere():
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = pyproject()["project"]
    requirements = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    installed_ray = importlib.metadata.version("ray")
    assert requirements["ray"].specifier.contains(installed_ray)
    cuda = torch_cuda()

    ray_images = [(w, RAY_IMAGE.search(ref)) for w, ref in all_image_references()]
    ray_images = [(w, m) for w, m in ray_images if m]
    assert ray_images, "no rayproject/ray image found"
    for where, match in ray_images:
        assert match.group("ray") == installed_ray, f"{where}: Ray {match.group('ray')}"
        assert requirements["ray"].specifier.contains(match.group("ray")), where
        python = f"{match.group('py')[0]}.{match.group('py')[1:]}"
        assert SpecifierSet(project["requires-python"]).contains(f"{python}.0"), where
        assert python == f"{sys.version_info.major}.{sys.version_info.minor}", where
        if cuda:  # a CUDA build of torch: the image's CUDA is the one torch was built for
            assert match.group("cu") == cuda, f"{where}: cu{match.group('cu')}, torch has cu{cuda}"
    # Ray pins in install commands and KubeRay's rayVersion name the same release.
    for name, documents in yaml_documents().items():
        for document in documents:
            for path, value in walk(document):
                if path.endswith(".rayVersion"):
                    assert value == installed_ray, f"{name}:{path}"
                if isinstance(value, str):
                    for pin in re.findall(r"ray\[[\w,]+\]==([\d.]+)", value):
                        assert pin == installed_ray, f"{name}:{path}"
    for pin in re.findall(r"ray\[[\w,]+\]==([\d.]+)", DOCKERFILE.read_text()):
        assert pin == installed_ray, "cluster/Dockerfile"


def test_kuberay_pods_run_the_project_image_of_this_version():
    version = pyproject()["project"]["version"]
    project_images = {ref for w, ref in all_image_references() if w.startswith("cluster/kuberay/")}
    assert project_images, "no images in cluster/kuberay/"
    for ref in project_images:
        name, _, tag = ref.rpartition(":")
        assert name.endswith("/fcn") and tag == version, ref
    documented = re.findall(r"docker build -f cluster/Dockerfile -t (\S+)", DOCKERFILE.read_text())
    assert set(documented) == project_images


def test_dockerfile_copies_files_that_exist():
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY "):
            sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
            for source in sources:
                if source == "README.md" and not (REPO / source).exists():
                    continue  # the lead's README may not exist yet in a working copy
                assert (REPO / source).exists(), f"cluster/Dockerfile copies missing {source}"


# --- KubeRay specifics ----------------------------------------------------------------------


def kuberay(kind: str) -> dict:
    for documents in yaml_documents().values():
        for document in documents:
            if document and document.get("kind") == kind:
                return document
    raise AssertionError(f"no {kind} in cluster/")


def pod_templates(node) -> list[dict]:
    found = []
    if isinstance(node, dict):
        if "containers" in node:
            found.append(node)
        for value in node.values():
            found += pod_templates(value)
    elif isinstance(node, list):
        for value in node:
            found += pod_templates(value)
    return found


def test_raycronjob_names_its_time_zone_and_sets_no_concurrency_policy():
    cron = kuberay("RayCronJob")
    spec = cron["spec"]
    # No KubeRay CRD has it (kubectl would reject the manifest): overlapping nights are left
    # to the segment job, which is safe under overlap (test_kuberay_schemas.py checks fields).
    assert "concurrencyPolicy" not in spec
    zoneinfo.ZoneInfo(spec["timeZone"])  # a real IANA zone, or this raises
    assert len(spec["schedule"].split()) == 5
    assert "CRON_TZ" not in spec["schedule"] and "TZ=" not in spec["schedule"]
    assert spec["jobTemplate"]["entrypoint"]


def test_rayjob_and_raycluster_autoscale_gpu_workers():
    for document in (kuberay("RayCluster")["spec"], kuberay("RayJob")["spec"]["rayClusterSpec"]):
        assert document["enableInTreeAutoscaling"] is True
        gpu_groups = [
            g
            for g in document["workerGroupSpecs"]
            if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
        ]
        assert gpu_groups and all(g["minReplicas"] < g["maxReplicas"] for g in gpu_groups)


def test_credentials_come_from_a_secret_or_service_account_never_the_files():
    for name, documents in yaml_documents().items():
        for document in documents:
            for path, value in walk(document):
                key = path.rsplit(".", 1)[-1].upper()
                assert "SECRET" not in key or not value, f"{name}:{path} holds a secret"
            if document and document.get("kind", "").startswith("Ray"):
                for pod in pod_templates(document):
                    refs = [e for c in pod["containers"] for e in c.get("envFrom", [])]
                    assert pod.get("serviceAccountName") and any("secretRef" in r for r in refs)
    text = (CLUSTER / "aws" / "cluster.env").read_text()
    assert not re.search(r"^\s*AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)=", text, re.M)


def test_region_is_the_same_in_every_file():
    region = yaml.safe_load(RAY_CLUSTER.read_text())["provider"]["region"]
    env = (CLUSTER / "aws" / "cluster.env").read_text()
    assert re.search(rf"^AWS_DEFAULT_REGION={region}$", env, re.M)
    settings = kuberay("ConfigMap")
    assert settings["data"]["AWS_DEFAULT_REGION"] == region


def test_allocator_settings_are_the_runtimes_in_every_file():
    """Every place that starts Ray processes sets fcn.runtime.ALLOCATOR_ENV, same values."""
    from fcn.runtime import ALLOCATOR_ENV

    for path in ("Makefile", "cluster/aws/cluster.env", "cluster/Dockerfile",
                 "cluster/local/stack.sh"):  # fmt: skip
        text = (REPO / path).read_text()
        for key, value in ALLOCATOR_ENV.items():
            assert re.search(rf"\b{key}\s*:?=\s*{value}\b", text), (path, key)


# --- the local stack script -----------------------------------------------------------------


def test_stack_script_is_valid_bash_and_stops_by_pid_only():
    subprocess.run(["bash", "-n", str(STACK)], check=True)
    assert os.access(STACK, os.X_OK)
    code = "\n".join(
        line for line in STACK.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    for forbidden in ("ray stop", "pkill", "killall"):
        assert forbidden not in code, f"stack.sh must not use {forbidden!r}"


def test_stack_script_usage_and_status_of_a_stopped_stack(tmp_path):
    env = {**os.environ, "FCN_STACK_DIR": str(tmp_path / "stack")}
    usage = subprocess.run(["bash", str(STACK)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "start|stop|status" in usage.stderr
    status = subprocess.run(["bash", str(STACK), "status"], env=env, capture_output=True)
    assert status.returncode == 3  # nothing running
    printed = subprocess.run(["bash", str(STACK), "env"], env=env, capture_output=True, text=True)
    assert "export MLFLOW_TRACKING_URI=http://127.0.0.1:" in printed.stdout
