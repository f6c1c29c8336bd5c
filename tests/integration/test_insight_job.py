"""Acceptance of the nightly insight (issue 12) on real services: `ray job submit` of
jobs/segment.py on the S3 test server with the MLflow test server, a normal night and then a
night of fog (a kind of image the model never saw)."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers_data import varied_model
from PIL import Image

from fcn import checkpoint, storage
from fcn.data import synthetic
from fcn.inference import predict
from fcn.nightly import cvat, drift

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NUM_CLASSES = 4
SIZE = 48
THRESHOLD = 0.26  # normal nights of 8 images sit near 0.15-0.2 from the reference, fog ~0.33
EXPERIMENT = "insight-test"
# `ray job submit` itself exits 1 for any failed job; the entry point's status is in its report.
DRIFT_EXIT = "failed with exit code 3"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def scenes(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic.render_scene(rng, SIZE, SIZE, (1, 2, 3))[0] for _ in range(count)]


def fog(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [synthetic.drift_scene(rng, SIZE, SIZE, "fog")[0] for _ in range(count)]


@pytest.fixture(scope="module")
def model(s3):
    """A small varied FCN on S3 whose config.json records the class distribution it predicts
    on normal synthetic scenes: the training reference a trained model would carry."""
    net = varied_model(NUM_CLASSES)
    reference = np.stack(scenes(0, 16))
    classes = predict(net, reference, net.preprocessing)
    counts = np.stack([np.bincount(c.ravel(), minlength=NUM_CLASSES) for c in classes])
    recorded = drift.Distribution(counts.sum(0), (counts > 0).sum(0), len(counts))
    config = {"model": "fcn-alexnet", "num_classes": NUM_CLASSES}
    config.update(preprocessing=net.preprocessing, class_distribution=recorded.to_dict())
    uri = s3.uri("insight/checkpoint")
    checkpoint.save(net.state_dict(), config, uri)
    return uri


def upload(s3, prefix: str, files: dict[str, bytes]) -> None:
    client = s3.client()
    for key, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{key}", Body=data)


def report_of(logs: str) -> tuple[str, dict]:
    uri = next(line.split()[1] for line in logs.splitlines() if line.startswith("report:"))
    return uri, json.loads(storage.read_bytes(f"{uri}/report.json"))


def queue_of(report_uri: str) -> list[dict]:
    return pq.read_table(io.BytesIO(storage.read_bytes(f"{report_uri}/queue.parquet"))).to_pylist()


def test_a_fog_night_is_flagged_and_its_images_lead_the_queue(s3, mlflow_server, ray_head, model):
    env = {**s3.env, **mlflow_server.env}
    output = s3.uri("insight/masks")
    args = [
        "jobs/segment.py", "--output", output, "--model", model, "--experiment", EXPERIMENT,
        "--drift-threshold", str(THRESHOLD), "--queue-size", "4",
    ]  # fmt: skip

    upload(s3, "insight/images", {f"day1/{i}.png": png(a) for i, a in enumerate(scenes(1, 8))})
    rc, logs = ray_head.submit([*args, "--input", s3.uri("insight/images/day1")], env=env)
    assert rc == 0, logs[-4000:]
    _, first = report_of(logs)
    assert first["drift"] is False and first["distance"] <= THRESHOLD
    assert set(first["references"]) == {"training"}  # no earlier night yet

    normal = {f"day2/normal_{i}.png": png(a) for i, a in enumerate(scenes(2, 2))}
    foggy = {f"day2/fog_{i}.png": png(a) for i, a in enumerate(fog(3, 6))}
    upload(s3, "insight/images", {**normal, **foggy})
    night2 = [*args, "--input", s3.uri("insight/images/day2")]
    rc, logs = ray_head.submit(night2, env=env)
    assert rc != 0 and DRIFT_EXIT in logs, logs[-4000:]  # drift: its own exit status
    report_uri, second = report_of(logs)
    assert second["drift"] is True and second["distance"] > THRESHOLD
    assert second["references"]["trailing"]["nights"] == [first["run_id"]]
    queue = queue_of(report_uri)
    # Fog is what the model never saw: the most uncertain images of the night.
    assert len(queue) == 4 and all("/fog_" in r["uri"] for r in queue)

    # The MLflow run of the night holds the numbers, the tag and the picture.
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string=f"tags.report = '{report_uri}'",
    )
    assert len(runs) == 1 and runs[0].data.tags["drift"] == "true"
    assert runs[0].data.metrics["drift_distance"] == pytest.approx(second["distance"])
    assert "drift_training_pixel" in runs[0].data.metrics
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "insight")}
    assert {"insight/drift.png", "insight/report.json", "insight/cvat.zip"} <= artifacts

    # The export holds the queued images and their predicted masks, in the VOC layout.
    archive = zipfile.ZipFile(io.BytesIO(storage.read_bytes(f"{report_uri}/cvat.zip")))
    ids = archive.read("ImageSets/Segmentation/default.txt").decode().split()
    assert ids == [cvat.image_id(r["uri"]) for r in queue]
    assert {f"SegmentationClass/{i}.png" for i in ids} <= set(archive.namelist())

    # The same night again, every image redone: nothing queued twice; the rest of the night is.
    rc, logs = ray_head.submit([*night2, "--force"], env=env)
    assert rc != 0 and DRIFT_EXIT in logs, logs[-4000:]
    again = queue_of(report_of(logs)[0])
    assert not {r["uri"] for r in again} & {r["uri"] for r in queue}
    ranks = {r["uri"].rsplit("/", 1)[-1]: r["rank"] for r in again}
    fog_ranks = [rank for name, rank in ranks.items() if name.startswith("fog_")]
    normal_ranks = [rank for name, rank in ranks.items() if name.startswith("normal_")]
    assert len(again) == 4 and np.mean(fog_ranks) < np.mean(normal_ranks)
