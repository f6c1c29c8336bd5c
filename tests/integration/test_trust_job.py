"""Trust, through `ray job submit` on the test Ray head, S3 server and MLflow server.

Credentials live only in the node's environment (conftest starts the Ray head and the MLflow
server with them) and are handed to no job: after a training and an evaluation run, no file
of the Ray session, no MLflow param or tag, no checkpoint file and no job log holds the secret
key or the session token. Object keys that URL parsing would cut (`#`, `?`) read exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers_data import write_split

from fcn import storage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(s3, mlflow_server):
    return {**s3.env, **mlflow_server.env}  # settings only: no credential travels


def secrets(s3) -> list[bytes]:
    found = [s3.credentials[k].encode() for k in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    assert all(len(s) > 16 for s in found)  # distinctive: a hit is a leak, not a coincidence
    return found


def files_holding(root: str, needles: list[bytes]) -> list[str]:
    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:  # a socket or a file gone meanwhile
                continue
            hits += [str(path)] if any(n in data for n in needles) else []
    return hits


@pytest.mark.slow
def test_no_credential_reaches_logs_params_or_checkpoints(ray_head, s3, env):
    data = s3.uri("trust-it/data")
    write_split(data, "train", 8, size=(48, 48), classes=(1,), seed=0)
    write_split(data, "val", 3, size=(48, 48), classes=(1,), seed=1)
    runs = s3.uri("trust-it/runs")
    train = ["jobs/train.py", "--data", data, "--storage", runs, "--name", "trust",
             "--experiment", "trust-it", "--workers", "1", "--cpus-per-worker", "1",
             "--preset", "fast", "--num-classes", "2", "--iterations", "4", "--eval-every", "2",
             "--width", "0.25", "--model", "fcn32s"]  # fmt: skip
    rc, train_logs = ray_head.submit(train, env=env, timeout=900)
    assert rc == 0, train_logs[-4000:]
    best = storage.join(runs, "trust/best")
    evaluate = ["jobs/evaluate.py", "--data", data, "--model", best, "--workers", "1",
                "--experiment", "trust-it"]  # fmt: skip
    rc, eval_logs = ray_head.submit(evaluate, env=env, timeout=900)
    assert rc == 0, eval_logs[-4000:]

    needles = secrets(s3)
    assert files_holding(ray_head.temp_dir, needles) == []
    assert not any(n.decode() in train_logs + eval_logs for n in needles)
    client = s3.client()
    for key in s3.keys("trust-it/runs/") + s3.keys("mlflow/"):
        body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert not any(n in body for n in needles), key
    from mlflow import MlflowClient

    mlflow = MlflowClient()
    experiment = mlflow.get_experiment_by_name("trust-it")
    found = mlflow.search_runs([experiment.experiment_id])
    assert len(found) == 2
    for run in found:
        text = repr(run.data.params) + repr(run.data.tags)
        assert not any(n.decode() in text for n in needles)
    # The node's environment is where workers found them: the head has them.
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == needles[0].decode()


def test_a_uri_with_credentials_fails_in_one_line_without_them(ray_head, s3, env):
    secret = s3.credentials["AWS_SECRET_ACCESS_KEY"]
    uri = f"s3://{s3.credentials['AWS_ACCESS_KEY_ID']}:{secret}@{s3.bucket}/trust-it/in"
    rc, logs = ray_head.submit(
        ["jobs/ingest.py", "--unlabeled", uri, "--output", s3.uri("trust-it/out")], env=env
    )
    assert rc != 0 and "credentials" in logs
    # `ray job submit` echoes the entrypoint it was given; no other line holds the secret.
    assert [line for line in logs.splitlines() if secret in line and "ingest.py" not in line] == []


@pytest.mark.parametrize("key", ["photo #1.png", "what?.png", "tab\there.png", "Ünï çødé.png"])
def test_object_keys_read_and_write_exactly(s3, key):
    base = s3.uri("trust-it/keys")
    storage.write_bytes(storage.join(base, key), key.encode())
    assert key in [storage.relative_key(base, f.uri) for f in storage.list_files(base)]
    assert s3.client().get_object(Bucket=s3.bucket, Key=f"trust-it/keys/{key}")["Body"].read() == (
        key.encode()
    )
    assert storage.read_bytes(storage.join(base, key)) == key.encode()
