"""Trust, through `ray job submit` on the test Ray head, S3 server and MLflow server.

Credentials live only in the node's environment (conftest starts the Ray head and the MLflow
server with them) and are handed to no job; a URI carrying them is refused without repeating
them. Object keys that URL parsing would cut (`#`, `?`) read exactly. (That no credential
reaches Ray's logs, MLflow or a checkpoint after a training and an evaluation run is checked
in test_multinode.py, on its training run.)
"""

from __future__ import annotations

import pytest

from fcn import storage

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def env(s3, mlflow_server):
    return {**s3.env, **mlflow_server.env}  # settings only: no credential travels


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
