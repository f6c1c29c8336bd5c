"""Real services for integration tests: an S3 API server, an MLflow server and a Ray head.

Each is a subprocess on a free loopback port, started once per session on first use, waited
for until it answers, and always torn down (its whole process group), so no process outlives
the session. Unit tests use none of them. Recipes: docs/environment.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fcn.runtime import ALLOCATOR_ENV
from fcn.runtime import LOCAL_RAY_ENV as RAY_ENV

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Each Ray node's log monitor globs its session's log folder every 0.1 s until the folder
# holds 1,000 files, then every 0.5 s (an idle head with 55 files: 0.67 % of a core, 0.37 % at
# 0.5 s; a test session's heads gather hundreds). At 0.5 s from the start a worker's log
# lines still reach its driver (a file found late is read from its start).
LOG_MONITOR_ENV = {"RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0"}
os.environ.update({**RAY_ENV, **LOG_MONITOR_ENV})  # every Ray this session starts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_port() -> int:
    """A free port for Ray's client server: it must lie outside the worker port range."""
    port = free_port()
    while 10002 <= port <= 19999:
        port = free_port()
    return port


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s:\n{tail(log)}")


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown kills the whole tree
        )  # fmt: skip


def stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the leader, wait, then SIGKILL whatever is left of its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def pids_naming(text: str) -> list[int]:
    """PIDs of the processes (other than this one) whose command line names `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def kill_naming(text: str) -> None:
    """Kill, by PID, processes whose command line names `text` (job drivers live in their own
    session, outside the head's process group)."""
    for pid in pids_naming(text):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def local_ray():
    """An in-process local Ray for unit tests (no head, no dashboard)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


# --- S3 ------------------------------------------------------------------------------------


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    env: dict = field(default_factory=dict)  # settings only: what a job may be handed
    # Distinctive, drawn per session (the server's one identity), so a test can grep for
    # leaks. Only the node's environment (this process, the Ray head, the MLflow server)
    # holds them.
    credentials: dict = field(default_factory=dict)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}".rstrip("/")

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def upload_tree(self, local: Path, prefix: str) -> str:
        """Upload a local directory under `prefix`; returns its s3:// URI."""
        client = self.client()
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                key = f"{prefix.rstrip('/')}/{path.relative_to(local).as_posix()}"
                client.upload_file(str(path), self.bucket, key)
        return self.uri(prefix)

    def keys(self, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        found = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            found += [obj["Key"] for obj in page.get("Contents", [])]
        return sorted(found)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """SeaweedFS (tests/seaweedfs.py), a production S3 server, with one static identity."""
    import seaweedfs

    credentials = {  # drawn per session: not even the uploaded sources hold them
        "AWS_ACCESS_KEY_ID": f"FCNTEST{secrets.token_hex(6).upper()}",
        "AWS_SECRET_ACCESS_KEY": f"fcn-test-secret-{secrets.token_hex(12)}",
    }
    bucket = "fcn-test"
    server = seaweedfs.start(
        tmp_path_factory.mktemp("s3"), bucket,
        credentials["AWS_ACCESS_KEY_ID"], credentials["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip
    env = {"AWS_ENDPOINT_URL": server.endpoint_url, "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in [*env, *credentials, "AWS_SESSION_TOKEN"]}
    os.environ.pop("AWS_SESSION_TOKEN", None)  # SeaweedFS takes a token for STS credentials
    os.environ.update({**env, **credentials})  # in-process fcn.storage / boto3 calls
    try:
        yield S3Server(server.endpoint_url, bucket, env, credentials)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- MLflow --------------------------------------------------------------------------------


@dataclass
class MlflowServer:
    uri: str
    env: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def mlflow_server(s3, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    cmd = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", f"s3://{s3.bucket}/mlflow",
    ]  # fmt: skip
    env = {
        **s3.env,
        **s3.credentials,
        "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    proc = start(cmd, env, root / "server.log")
    uri = f"http://127.0.0.1:{port}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        wait_http(f"{uri}/health", 90, proc, root / "server.log")
        os.environ["MLFLOW_TRACKING_URI"] = uri
        env = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_S3_ENDPOINT_URL": s3.endpoint_url}
        yield MlflowServer(uri, env)
    finally:
        stop_group(proc, grace=5)
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


# --- Parallel runs ---------------------------------------------------------------------------

# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`, files taken
# in the order below: `--no-loadscope-reorder`): most of an integration test's time is spent
# waiting on jobs, not on the CPU. A file's tests stay on one worker, so its module fixtures (a
# local Ray, a second Ray node) are set up once; each worker starts its own session services
# (S3, MLflow, Ray head) on free ports. The demo, which four files use, runs once for all
# workers (`demo` below).
DEMO_FIRST = "tests/integration/test_insight_job.py"


def pytest_collection_modifyitems(config, items):
    """The order the workers take files in: the demo's first user, then the integration tests
    that need no demo (the demo trains meanwhile on the other worker), then the demo's other
    users, then the unit tests (short ones fill the end). Stable within each kind."""

    def kind(item) -> int:
        path = item.nodeid.split("::")[0]
        if path == DEMO_FIRST:
            return 0
        if path.startswith("tests/integration/"):
            return 2 if "demo" in item.fixturenames else 1
        return 3

    items.sort(key=kind)


# --- Ray -----------------------------------------------------------------------------------


@dataclass
class RayHead:
    address: str  # the dashboard / job-submission address
    temp_dir: str
    logs: list = field(default_factory=list)
    gcs_address: str = ""  # what `ray start --address` of another node takes

    def submit(
        self, args: list[str], env: dict | None = None, timeout: float = 600
    ) -> tuple[int, str]:
        """`ray job submit` `python ARGS` with the repository as working dir; (rc, output)."""
        runtime_env = {"env_vars": {**ALLOCATOR_ENV, **RAY_ENV, **(env or {})}}
        cmd = [
            str(BIN / "ray"), "job", "submit", "--address", self.address,
            "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
            "--", "python", *args,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                env={**os.environ, **RAY_ENV},
            )  # fmt: skip
        except subprocess.TimeoutExpired as err:
            output = (err.stdout or b"").decode(errors="replace") if err.stdout else ""
            raise AssertionError(f"job {args} ran past {timeout}s:\n{output[-6000:]}") from err
        output = done.stdout + done.stderr
        self.logs.append(output)
        return done.returncode, output

    def submit_no_wait(self, args: list[str], env: dict | None = None) -> str:
        """`submit` without waiting for the job: its submission id."""
        runtime_env = {"env_vars": {**ALLOCATOR_ENV, **RAY_ENV, **(env or {})}}
        cmd = [
            str(BIN / "ray"), "job", "submit", "--no-wait", "--address", self.address,
            "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env),
            "--", "python", *args,
        ]  # fmt: skip
        done = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, **RAY_ENV},
        )  # fmt: skip
        found = re.search(r"raysubmit_[A-Za-z0-9]+", done.stdout)  # the CLI colours its output
        assert done.returncode == 0 and found, done.stdout + done.stderr
        return found.group(0)


def kill_job(marker: str) -> int:
    """SIGKILL the process group of every job driver whose command line names `marker`, as a
    lost node or `kill -9 -PGID` would (Ray starts each driver in its own session: the group
    is the entry point's shell and the driver). Returns how many groups died."""
    groups = set()
    for pid in pids_naming(marker):
        with contextlib.suppress(ProcessLookupError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            driver = b"jobs/" in cmdline or b"integration/train_with_drill.py" in cmdline
            if driver and b" job submit " not in cmdline:  # not the CLI
                groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())  # never this test's own
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return len(groups)


def wait_job_agent(head: RayHead, proc: subprocess.Popen, log: Path, timeout: float = 120):
    """The dashboard answers before the node's job agent registers ("No available agent to
    submit job"): ready means a trivial job ran to completion."""
    deadline = time.monotonic() + timeout
    cmd = [str(BIN / "ray"), "job", "submit", "--address", head.address, "--", "true"]
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray head exited with {proc.returncode}:\n{tail(log)}")
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **RAY_ENV})
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"ray head takes no jobs:\n{done.stdout}{done.stderr}")
        time.sleep(1)


@pytest.fixture(scope="session")
def ray_head(s3):
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="fcnray", dir="/tmp")
    dashboard_port = free_port()
    gcs_port = free_port()
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dashboard_port), "--ray-client-server-port", str(client_port()),
        "--num-cpus", "4", "--object-store-memory", str(512 * 1024 * 1024),
        "--temp-dir", temp_dir,
        # Fixed by default (52365, ...): a second Ray on the machine would lose its job agent
        # ("No available agent to submit job"). Free ports keep heads independent.
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
    ]  # fmt: skip
    env = {
        **RAY_ENV,
        # The node's environment: workers and job drivers get S3 credentials from it, never
        # from a runtime environment (Ray logs those).
        **s3.env,
        **s3.credentials,
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # Ray Train's spot-preemption watcher is one more actor process per training (~1.5 s
        # of CPU to start); a loopback node is never preempted.
        "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
        # job entry points say `python`: make it this environment's interpreter
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = Path(temp_dir + ".log")
    proc = start(cmd, env, log)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_http(f"{address}/api/version", 90, proc, log)
        head = RayHead(address, temp_dir, gcs_address=f"127.0.0.1:{gcs_port}")
        wait_job_agent(head, proc, log)
        yield head
    finally:
        stop_group(proc, grace=15)
        kill_naming(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


@dataclass
class RayNode:
    resource: str  # the custom resource only this node has (`--placement-resource`)
    node_id: str
    temp_dir: str  # its logs: session_*/logs


@pytest.fixture(scope="module")
def ray_worker_node(ray_head, s3):
    """A second Ray node joined to the test head, with 2 CPUs and the custom resource
    `fcn_test_node` (2 units): jobs place work on it with `--placement-resource`. Like a
    real node it has S3 credentials in its own environment."""
    from ray.util.state import list_nodes

    resource = "fcn_test_node"
    # Its own temp dir (two nodes' sockets cannot share one); named after the head's, so the
    # head's teardown (kill_naming) also ends whatever of it is left.
    temp_dir = ray_head.temp_dir + "-node"
    params = {
        "gcs_address": ray_head.gcs_address, "node_ip_address": "127.0.0.1", "num_cpus": 2,
        "resources": {resource: 2}, "object_store_memory": 256 * 1024 * 1024,
        "temp_dir": temp_dir, "node_manager_port": 0, "min_worker_port": 0,
        "max_worker_port": 0, "dashboard_agent_listen_port": free_port(),
        "metrics_agent_port": free_port(), "runtime_env_agent_port": free_port(),
        "metrics_export_port": free_port(),
    }  # fmt: skip
    cmd = [sys.executable, str(REPO / "tests/integration/ray_node.py"), json.dumps(params)]
    env = {**RAY_ENV, **s3.env, **s3.credentials}  # the node's own environment
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    log = Path(temp_dir + ".log")
    proc = start(cmd, env, log)
    try:
        deadline = time.monotonic() + 120
        while True:  # joined: the head lists it alive, with its resource
            nodes = list_nodes(address=ray_head.address, filters=[("state", "=", "ALIVE")])
            found = [n.node_id for n in nodes if resource in (n.resources_total or {})]
            if found:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the second Ray node did not join:\n{tail(log)}")
            time.sleep(0.5)
        yield RayNode(resource, found[0], temp_dir)
    finally:
        stop_group(proc, grace=15)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """(root, env, stdout) of `python jobs/demo.py` run once as a new user runs it: a local Ray
    and a local MLflow store. Shared by the demo's own tests (test_opex_job.py) and by the tests
    that need a model which learned the synthetic scenes (test_insight_job.py, ...): one
    training of minutes for all, and for every xdist worker: the first to get here runs it
    under a file lock, the others wait on the lock and reads its result."""
    import fcntl

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    root, finished = shared / "demo", shared / "demo-stdout.txt"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with open(shared / "demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not finished.exists():
            shutil.rmtree(root, ignore_errors=True)  # a failed attempt's leftovers
            root.mkdir()
            done = subprocess.run(
                [sys.executable, "jobs/demo.py", "--root", str(root)],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=1200,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
            finished.write_text(done.stdout)
    return root, env, finished.read_text()
