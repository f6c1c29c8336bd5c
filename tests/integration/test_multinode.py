"""One training run on a two-node Ray cluster, drilled and checked three ways.

The cluster: the test head and a second node (`ray_worker_node`) that alone has the custom
resource `fcn_test_node`; with `--placement-resource fcn_test_node` the training worker, the
evaluation worker and the segment model actor run there (Ray's state API says on which node
each actor ran). Data,
checkpoints and masks are on the S3 test server; credentials only in the nodes' environment.

1. The training job is SIGKILLed (its process group) once its first checkpoint is
   registered: its MLflow run stays RUNNING; the next submission with the same --name marks it
   KILLED, resumes from the checkpoint in the same run and finishes.
2. Segment masks images with the trained checkpoint on the second node: the masks equal
   `fcn.engine.inference.predict` in this process from the same checkpoint.
3. After the training, an evaluation and the segment run, no file of either node's Ray
   session, no job log, no MLflow param or tag, no checkpoint file and no artifact holds the
   secret key or the session token.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import fault_drill
import numpy as np
import pytest
from conftest import kill_job
from helpers_data import write_split
from PIL import Image
from test_segment_job import encode, picture

from fcn import storage
from fcn.engine import images, inference
from fcn.nightly import masks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITERATIONS, EVAL_EVERY = 4, 2
EXPERIMENT = "multi-it"


def submission_id(logs: str) -> str:
    return re.search(r"raysubmit_[A-Za-z0-9]+", logs).group(0)


def actor_nodes(ray_head, submissions: list[str], name: str) -> set[str]:
    """The node ids where the jobs' actors named `name` ran, alive or dead (Ray Data's pool
    actors are `_MapWorker`s whose repr names the class they run)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    client = JobSubmissionClient(ray_head.address)
    jobs = {client.get_job_info(s).job_id for s in submissions}
    actors = list_actors(address=ray_head.address, limit=10_000, detail=True)
    return {
        a.node_id for a in actors if a.job_id in jobs and name in f"{a.class_name} {a.repr_name}"
    }


def secrets(s3) -> list[bytes]:
    found = [s3.credentials["AWS_SECRET_ACCESS_KEY"].encode()]
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


@pytest.fixture(scope="module")
def env(s3, mlflow_server):
    return {**s3.env, **mlflow_server.env}  # settings only: no credential travels


@pytest.fixture(scope="module")
def trained(ray_head, ray_worker_node, s3, env):
    """The training run, killed as a whole after its first checkpoint and resubmitted."""
    from mlflow import MlflowClient

    data = s3.uri("multi/data")
    write_split(data, "train", 6, size=(48, 48), classes=(1,), seed=0)
    write_split(data, "val", 2, size=(48, 48), classes=(1,), seed=1)
    runs = s3.uri("multi/runs")
    args = [
        # jobs/train.py with the drill's hook, which marks registered checkpoints (no fault)
        "tests/integration/train_with_drill.py", "--data", data, "--storage", runs,
        "--name", "multi",
        "--experiment", EXPERIMENT, "--workers", "1", "--cpus-per-worker", "1",
        "--preset", "fast", "--num-classes", "2", "--iterations", str(ITERATIONS),
        "--eval-every", str(EVAL_EVERY), "--width", "0.25", "--model", "fcn32s",
        "--placement-resource", ray_worker_node.resource,
    ]  # fmt: skip
    killed = ray_head.submit_no_wait(args, env)
    marker = fault_drill.registered_marker(storage.join(runs, "multi"), EVAL_EVERY)
    deadline = time.monotonic() + 600
    while not storage.exists(marker):
        assert time.monotonic() < deadline, "no registered checkpoint within 600 s"
        time.sleep(1)
    assert kill_job(runs) >= 1
    client = MlflowClient()
    (orphan,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    rc, logs = ray_head.submit(args, env=env, timeout=900)
    assert rc == 0, logs[-4000:]
    return {
        "data": data, "runs": runs, "best": storage.join(runs, "multi/best"), "logs": logs,
        "orphan": orphan, "submissions": [killed, submission_id(logs)],
    }  # fmt: skip


def test_a_job_killed_as_a_whole_resumes_its_run_on_the_resource_node(
    ray_head, ray_worker_node, trained
):
    from mlflow import MlflowClient

    orphan = trained["orphan"].info
    assert orphan.status == "RUNNING" and orphan.end_time is None  # no process to end it
    logs = trained["logs"]
    assert "marked KILLED" in logs, logs[-4000:]
    assert f"restored from checkpoint at iteration {EVAL_EVERY}" in logs
    client = MlflowClient()
    (run,) = client.search_runs([orphan.experiment_id])
    assert run.info.run_id == orphan.run_id and run.info.status == "FINISHED"
    logged = {m.step for m in client.get_metric_history(orphan.run_id, "train_loss")}
    assert logged == set(range(1, ITERATIONS + 1))
    nodes = actor_nodes(ray_head, trained["submissions"], "RayTrainWorker")
    assert nodes == {ray_worker_node.node_id}


def test_segment_on_the_resource_node_gives_the_masks_of_one_process(
    ray_head, ray_worker_node, s3, trained
):
    files = {f"multi/images/{i}.png": encode(picture(40 + 8 * i, 48, 30 + i)) for i in range(3)}
    for key, body in files.items():
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body)
    args = [
        "jobs/segment.py", "--input", s3.uri("multi/images"), "--output", s3.uri("multi/masks"),
        "--model", trained["best"], "--placement-resource", ray_worker_node.resource,
    ]  # fmt: skip
    rc, logs = ray_head.submit(args, env=s3.env)
    assert rc == 0 and "3 done, 0 skipped, 0 failed" in logs, logs[-4000:]
    trained["logs"] += logs
    nodes = actor_nodes(ray_head, [submission_id(logs)], "Predictor")
    assert nodes == {ray_worker_node.node_id}
    loaded = inference.load_model(trained["best"])
    for key, body in files.items():
        mask_uri = s3.uri(f"multi/masks/{masks.mask_key(key.split('/', 2)[2])}")
        mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(mask_uri))))
        image = images.decode_image(body)
        expected = inference.predict(loaded.model, image[None], loaded.preprocessing)[0]
        assert np.array_equal(mask, expected), key


def test_no_credential_reaches_logs_params_or_checkpoints(
    ray_head, ray_worker_node, s3, env, trained
):
    from mlflow import MlflowClient

    evaluate = ["jobs/evaluate.py", "--data", trained["data"], "--model", trained["best"],
                "--workers", "1", "--experiment", EXPERIMENT,
                "--placement-resource", ray_worker_node.resource]  # fmt: skip
    rc, logs = ray_head.submit(evaluate, env=env, timeout=900)
    assert rc == 0, logs[-4000:]
    nodes = actor_nodes(ray_head, [submission_id(logs)], "RayTrainWorker")
    assert nodes == {ray_worker_node.node_id}  # the evaluation worker, where it was asked

    needles = secrets(s3)
    assert files_holding(ray_head.temp_dir, needles) == []
    assert files_holding(ray_worker_node.temp_dir, needles) == []
    assert not any(n.decode() in trained["logs"] + logs for n in needles)
    client = s3.client()
    for key in s3.keys("multi/") + s3.keys("mlflow/"):
        body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert not any(n in body for n in needles), key
    mlflow = MlflowClient()
    found = mlflow.search_runs([mlflow.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(found) == 2  # the training run and the evaluation run
    for run in found:
        text = repr(run.data.params) + repr(run.data.tags)
        assert not any(n.decode() in text for n in needles)
