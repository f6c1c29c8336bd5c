"""Acceptance of issue 28 on real services: every mask explains itself, every champion move is
on the record, and a bad model is rolled back in one command.

Two versions trained with `ray job submit` (`jobs/train.py`, the cheapest real training:
quarter-width FCN-32s, 2 iterations, 64 px images), the second promoted by `compare
--promote`; a night segments under it; `jobs/explain.py` on one of its masks names version 2,
its run, digests and commit; `compare --rollback` (submitted) moves the champion back to
version 1; the next night segments only its new image under version 1, the night after with
the model-change option redoes the masks of the version rolled back from; `explain` on a new
mask names version 1 and the rollback; `--history` lists the three moves in order. And the
history survives a restart of its own tracking server, read back with the plain MLflow API.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import BIN, free_port, start, stop_group, wait_http
from helpers_data import write_split
from PIL import Image

from fcn import storage, tracking
from fcn.config import ExplainConfig
from fcn.nightly.explain import explain

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "fcn-audit-it"


def local_job(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """A driver-only job run as an operator runs it, from the checkout."""
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env={**os.environ, **env}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def train(ray_head, s3, env, data, name) -> None:
    rc, logs = ray_head.submit(
        ["jobs/train.py", "--data", data, "--storage", s3.uri("audit/runs"), "--name", name,
         "--experiment", f"audit-{name}", "--registered-model", MODEL, "--model", "fcn32s",
         "--width", "0.25", "--preset", "fast", "--num-classes", "3", "--workers", "1",
         "--iterations", "2", "--eval-every", "2"],
        env=env, timeout=600,
    )  # fmt: skip
    assert rc == 0, logs[-4000:]


def upload_images(s3, keys: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for key in keys:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
        s3.client().put_object(Bucket=s3.bucket, Key=f"audit/images/{key}", Body=buffer.getvalue())


def night(ray_head, s3, env, *extra) -> list[dict]:
    """A nightly run under the champion; the rows of its manifest."""
    rc, logs = ray_head.submit(
        ["jobs/segment.py", "--input", s3.uri("audit/images"), "--output", s3.uri("audit/masks"),
         "--model", f"models:/{MODEL}@champion", "--queue-size", "0", *extra],
        env=env,
    )  # fmt: skip
    assert rc == 0, logs[-4000:]
    uri = next(line.split()[-1] for line in logs.splitlines() if line.startswith("manifest:"))
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


def explained(mask: str) -> dict:
    """What `jobs/explain.py MASK --json` prints (the job's text and errors are run as a
    process below; the content is asked for in this process: a process per question costs
    seconds on 2 cores)."""
    found = explain(ExplainConfig(mask=mask, json=True))
    return json.loads(json.dumps(found.to_dict()))


@pytest.mark.slow
def test_explain_rollback_and_history_through_ray_jobs(ray_head, s3, mlflow_server):
    data = s3.uri("audit/data")
    write_split(data, "train", 4, size=(64, 64), classes=(1, 2), seed=0)
    write_split(data, "val", 3, size=(64, 64), classes=(1, 2), seed=1)
    commit = tracking.git_commit() or "c0ffee" * 6 + "c0ff"
    env = {**s3.env, **mlflow_server.env, tracking.GIT_COMMIT_ENV: commit}
    train(ray_head, s3, env, data, "v1")
    train(ray_head, s3, env, data, "v2")
    client = tracking.client()
    runs = {v.version: v.run_id for v in client.search_model_versions(f"name = '{MODEL}'")}
    assert sorted(runs) == ["1", "2"]
    # The second promoted (train already did when its mean IU was higher: then no second move)
    done = local_job(["jobs/compare.py", "--experiment", "audit-v2", "--output",
                      s3.uri("audit/compare"), "--promote"], env)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert str(tracking.champion_version(MODEL).version) == "2"

    # Night 1 under version 2; explain one of its masks.
    upload_images(s3, ["a.png", "b/c.png"], seed=0)
    rows = night(ray_head, s3, env, "--resegment-older-models")
    assert {r["model"] for r in rows} == {f"models:/{MODEL}/2"} and len(rows) == 2
    mask = s3.uri("audit/masks/b/c.png")
    found = explained(mask)
    assert found["image"] == s3.uri("audit/images/b/c.png") and found["etag"]
    assert found["night"]["run_id"] == rows[0]["run_id"] and found["night"]["mlflow_run_id"]
    lineage, run = found["lineage"], client.get_run(runs["2"])
    assert (lineage["version"], lineage["run_id"]) == ("2", runs["2"])
    assert lineage["git_commit"] == commit
    assert lineage["val_digest"] == run.data.tags["val_digest"]
    assert lineage["train_digest"] == run.data.tags["train_digest"]
    datasets = {d["context"]: d for d in lineage["datasets"]}
    assert datasets["val"]["digest"] == lineage["val_digest"]
    assert datasets["train"]["uri"] == f"{data}/train" and datasets["val"]["uri"] == f"{data}/val"
    assert found["promotion"]["to_version"] == "2"
    assert found["promotion"]["job"] in ("train", "compare --promote")
    text = local_job(["jobs/explain.py", mask], env)
    assert f"models:/{MODEL}/2" in text.stdout and commit in text.stdout
    stray = local_job(["jobs/explain.py", s3.uri("audit/images/a.png")], env)
    assert stray.returncode == 2 and stray.stderr.startswith("error: ")
    assert stray.stderr.count("\n") == 1

    # Roll back in one command (a Ray job like any other); the champion is version 1.
    reason = "version 2 paints every street as sky"
    rc, logs = ray_head.submit(
        ["jobs/compare.py", "--rollback", "--registered-model", MODEL, "--reason", reason], env
    )
    assert rc == 0 and "rolled back from 2" in logs, logs[-4000:]
    assert str(tracking.champion_version(MODEL).version) == "1"

    # Night 2, without the model-change option: only the new image, under version 1.
    upload_images(s3, ["d.png"], seed=1)
    rows = night(ray_head, s3, env)
    assert [(r["uri"], r["model"]) for r in rows] == [
        (s3.uri("audit/images/d.png"), f"models:/{MODEL}/1")
    ]
    found = explained(s3.uri("audit/masks/d.png"))
    assert found["lineage"]["version"] == "1" and found["lineage"]["run_id"] == runs["1"]
    move = found["promotion"]
    assert (move["job"], move["from_version"], move["to_version"]) == ("compare --rollback", "2",
                                                                       "1")  # fmt: skip
    assert move["reason"] == reason and not move["forced"]
    # Night 3, with it: the masks version 2 made are redone under version 1 (rolled back from).
    rows = night(ray_head, s3, env, "--resegment-older-models")
    assert sorted(r["uri"] for r in rows) == [s3.uri("audit/images/a.png"),
                                              s3.uri("audit/images/b/c.png")]  # fmt: skip
    assert {r["model"] for r in rows} == {f"models:/{MODEL}/1"}
    assert explained(mask)["lineage"]["version"] == "1"

    done = local_job(["jobs/compare.py", "--history", "--registered-model", MODEL], env)
    assert done.returncode == 0, done.stderr
    table = [line.split("|") for line in done.stdout.splitlines() if line.startswith("| 20")]
    assert [(r[2].strip(), r[3].strip()) for r in table] == [("-", "1"), ("1", "2"), ("2", "1")]
    assert table[2][4].strip() == "compare --rollback" and reason in table[2][5]


def mlflow_server_on(db: Path, artifacts: Path, log: Path):
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
           "--artifacts-destination", str(artifacts)]  # fmt: skip
    proc = start(cmd, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, log)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", 90, proc, log)
    except BaseException:
        stop_group(proc)
        raise
    return proc, uri


@pytest.mark.slow
def test_the_history_survives_a_tracking_server_restart(tmp_path):
    from mlflow import MlflowClient

    db, artifacts = tmp_path / "mlflow.db", tmp_path / "artifacts"
    proc, uri = mlflow_server_on(db, artifacts, tmp_path / "first.log")
    try:
        client = MlflowClient(uri)
        client.create_registered_model("restart")
        for digest in ("d1", "d1"):
            client.create_model_version("restart", source="s3://b/m", tags={"val_digest": digest})
        tracking.promote("restart", "1", uri=uri, job="train")
        tracking.promote("restart", "2", uri=uri)
        tracking.rollback("restart", "bad on night photos", uri=uri)
        before = tracking.champion_history("restart", uri)
    finally:
        stop_group(proc)
    proc, uri = mlflow_server_on(db, artifacts, tmp_path / "second.log")
    try:
        client = MlflowClient(uri)  # plain MLflow: no code of this project reads it back
        experiment = client.get_experiment_by_name("champion-history")
        runs = client.search_runs([experiment.experiment_id], "tags.model_name = 'restart'",
                                  order_by=["attributes.start_time ASC"])  # fmt: skip
        moves = [(r.data.tags.get("from_version"), r.data.tags["to_version"], r.data.tags["job"])
                 for r in runs]  # fmt: skip
        assert moves == [(None, "1", "train"), ("1", "2", "compare --promote"),
                         ("2", "1", "compare --rollback")]  # fmt: skip
        assert runs[-1].data.tags["reason"] == "bad on night photos"
        assert tracking.champion_history("restart", uri) == before
        assert client.get_model_version_by_alias("restart", "champion").version == "1"
    finally:
        stop_group(proc)
