"""cluster/local/stack.sh: start the stack, run a job on it that uses S3 and MLflow, stop it,
and leave no process behind. The stack is the thing under test, so none of the conftest
services are used; every port is a free one, so it runs beside other stacks and tests."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import BIN, RAY_ENV, REPO, client_port, free_port, pids_naming

pytestmark = pytest.mark.integration

STACK = REPO / "cluster" / "local" / "stack.sh"

# The job a user would submit first: write and read an object, log a run with an artifact.
# It gets S3 and MLflow settings from the stack's environment alone (no runtime env).
PROBE = textwrap.dedent(
    """
    import mlflow
    from fcn import storage
    storage.write_bytes("s3://fcn/probe/hello.txt", b"hi")
    assert storage.read_bytes("s3://fcn/probe/hello.txt") == b"hi"
    mlflow.set_experiment("stack-probe")
    with mlflow.start_run(run_name="probe") as run:
        mlflow.log_metric("ok", 1.0)
        mlflow.log_text("through the MLflow server into S3", "probe.txt")
    print("PROBE-OK", run.info.run_id)
    """
)


@pytest.fixture
def stack_env():
    # Short: Ray's socket paths under it must stay below ~107 characters.
    directory = tempfile.mkdtemp(prefix="fcnstk", dir="/tmp")
    env = {
        **os.environ,
        **RAY_ENV,
        "FCN_STACK_DIR": directory,
        "FCN_RAY_PORT": str(free_port()),
        "FCN_DASHBOARD_PORT": str(free_port()),
        "FCN_CLIENT_PORT": str(client_port()),
        "FCN_AGENT_PORT": str(free_port()),
        "FCN_S3_PORT": str(free_port()),
        "FCN_MLFLOW_PORT": str(free_port()),
        "FCN_NUM_CPUS": "2",
    }
    for key in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        env.pop(key, None)  # whatever this session set must not leak into the stack
    try:
        yield env
    finally:
        subprocess.run(["bash", str(STACK), "stop"], env=env, capture_output=True, timeout=120)
        for pid in pids_naming(directory):  # a failed test must not leave processes either
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


def stack(command: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(STACK), command], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_stack_runs_a_job_with_s3_and_mlflow_then_stops_clean(stack_env):
    started = stack("start", stack_env)
    assert started.returncode == 0, started.stdout + started.stderr
    status = stack("status", stack_env, timeout=60)
    assert status.returncode == 0 and status.stdout.count("running") == 3, status.stdout

    exported = stack("env", stack_env, timeout=30).stdout
    job_env = dict(stack_env)
    for line in exported.splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        job_env[key] = value
    submitted = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", str(REPO), "--",
         "python", "-c", PROBE],
        env=job_env, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0 and re.search("PROBE-OK [0-9a-f]{32}", output), output[-6000:]
    assert "succeeded" in output

    # What the job wrote is really there, seen from outside the cluster.
    import boto3
    from mlflow.tracking import MlflowClient

    s3 = boto3.client(
        "s3",
        endpoint_url=job_env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    assert s3.get_object(Bucket="fcn", Key="probe/hello.txt")["Body"].read() == b"hi"
    run_id = re.search(r"PROBE-OK ([0-9a-f]{32})", output).group(1)
    client = MlflowClient(tracking_uri=job_env["MLFLOW_TRACKING_URI"])
    assert client.get_run(run_id).data.metrics == {"ok": 1.0}
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fcn", Prefix="mlflow/")["Contents"]]
    assert any(k.endswith(f"{run_id}/artifacts/probe.txt") for k in keys), keys

    pids = [int((Path(stack_env["FCN_STACK_DIR"]) / f"{n}.pid").read_text()) for n in
            ("s3", "mlflow", "ray")]  # fmt: skip
    stopped = stack("stop", stack_env, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert pids_naming(stack_env["FCN_STACK_DIR"]) == []
    for pid in pids:  # each service ran as its own process group: all of it is gone
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert stack("status", stack_env, timeout=60).returncode == 3  # all stopped
