"""A two-node Ray cluster on this machine: the test head and a second node
(`ray_worker_node`) that alone has the custom resource `fcn_test_node`. With
`--placement-resource fcn_test_node` the training worker and the segment model actor run
there (Ray's state API says on which node each actor ran); data, checkpoints and masks are on
the S3 test server.

The training job is also the whole-job kill drill: SIGKILLed (its process group) once its
first checkpoint is registered, it leaves its MLflow run RUNNING; the next submission with the
same --name marks that run KILLED, resumes from the checkpoint in the same run and finishes.
The segment job then masks images with the trained checkpoint, on the second node: the masks
equal `fcn.inference.predict` in this process from the same checkpoint.
"""

from __future__ import annotations

import io
import re
import time

import fault_drill
import numpy as np
import pytest
from conftest import kill_job
from helpers_data import write_split
from PIL import Image
from test_segment_job import encode, picture

from fcn import images, inference, masks, storage
from fcn.train import HOOK_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ITERATIONS, EVAL_EVERY = 4, 2


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


def submission_id(logs: str) -> str:
    return re.search(r"raysubmit_[A-Za-z0-9]+", logs).group(0)


def test_train_and_segment_run_on_the_node_with_the_resource(
    ray_head, ray_worker_node, s3, mlflow_server
):
    from mlflow import MlflowClient

    env = {**s3.env, **mlflow_server.env, HOOK_ENV: "tests.integration.fault_drill"}
    data = s3.uri("multi/data")
    write_split(data, "train", 6, size=(48, 48), classes=(1,), seed=0)
    write_split(data, "val", 2, size=(48, 48), classes=(1,), seed=1)
    runs = s3.uri("multi/runs")
    train = [
        "jobs/train.py", "--data", data, "--storage", runs, "--name", "multi",
        "--experiment", "multi-it", "--workers", "1", "--cpus-per-worker", "1",
        "--preset", "fast", "--num-classes", "2", "--iterations", str(ITERATIONS),
        "--eval-every", str(EVAL_EVERY), "--width", "0.25", "--model", "fcn32s",
        "--placement-resource", ray_worker_node.resource,
    ]  # fmt: skip

    # Killed as a whole once its first checkpoint is registered (the drill hook marks it).
    killed = ray_head.submit_no_wait(train, env)
    marker = fault_drill.registered_marker(storage.join(runs, "multi"), EVAL_EVERY)
    deadline = time.monotonic() + 600
    while not storage.exists(marker):
        assert time.monotonic() < deadline, "no registered checkpoint within 600 s"
        time.sleep(1)
    assert kill_job(runs) >= 1
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("multi-it").experiment_id])
    assert run.info.status == "RUNNING" and run.info.end_time is None  # no process to end it

    rc, logs = ray_head.submit(train, env=env, timeout=900)
    assert rc == 0, logs[-4000:]
    assert "marked KILLED" in logs and f"restored from checkpoint at iteration {EVAL_EVERY}" in logs
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    logged = {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}
    assert logged == set(range(1, ITERATIONS + 1))
    trained = [killed, submission_id(logs)]
    assert actor_nodes(ray_head, trained, "RayTrainWorker") == {ray_worker_node.node_id}

    # Segment with the trained checkpoint, its model actor on the second node.
    best = storage.join(runs, "multi/best")
    files = {f"multi/images/{i}.png": encode(picture(40 + 8 * i, 48, 30 + i)) for i in range(3)}
    for key, body in files.items():
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=body)
    segment = [
        "jobs/segment.py", "--input", s3.uri("multi/images"), "--output", s3.uri("multi/masks"),
        "--model", best, "--placement-resource", ray_worker_node.resource,
    ]  # fmt: skip
    rc, logs = ray_head.submit(segment, env=s3.env)
    assert rc == 0 and "3 done, 0 skipped, 0 failed" in logs, logs[-4000:]
    nodes = actor_nodes(ray_head, [submission_id(logs)], "Predictor")
    assert nodes == {ray_worker_node.node_id}
    loaded = inference.load_model(best)
    for key, body in files.items():
        mask_uri = s3.uri(f"multi/masks/{masks.mask_key(key.split('/', 2)[2])}")
        mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(mask_uri))))
        image = images.decode_image(body)
        expected = inference.predict(loaded.model, image[None], loaded.preprocessing)[0]
        assert np.array_equal(mask, expected), key
