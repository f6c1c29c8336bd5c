"""Acceptance of the nightly segment job (issue 7) on real services: `ray job submit` to the
test Ray head, images and masks on the S3 test server, the model from a checkpoint on S3 and
from an MLflow registry alias on the test MLflow server."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import BIN, RAY_ENV
from helpers_data import geotiff, varied_model
from PIL import Image

from fcn import storage
from fcn.engine import checkpoint, images
from fcn.engine.classes import voc_colormap
from fcn.engine.models.preprocess import normalize
from fcn.nightly import masks, state

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 4
MODEL_NAME = "fcn-segment-test"


def encode(image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[: h // 2, : w // 3] = (200, 30, 30)
    return image


def good_images(seed: int, count: int) -> dict[str, bytes]:
    return {
        f"new/img_{seed}_{i}.png": encode(picture(64 + 8 * i, 80, seed * 100 + i))
        for i in range(count)
    }


def first_night_images() -> tuple[dict[str, bytes], set[str]]:
    """Keys -> bytes, and the keys that must fail."""
    jpeg = encode(picture(72, 72, 9), "JPEG")
    frames = [Image.fromarray(picture(16, 16, i)) for i in range(2)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    bad = {
        "bad/empty.jpg": b"",
        "bad/not-an-image.jpg": b"<html>404</html>",
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        "bad/animated.png": animated.getvalue(),  # a GIF under a .png name
        "bad/huge.png": encode(np.zeros((200, 200, 3), np.uint8)),  # > --max-pixels 20000
    }
    good = {
        "a.jpg": jpeg,
        "nested/deep/b.PNG": encode(picture(64, 96, 1)),
        "nested/c.png": encode(picture(64, 96, 2)),  # same size as b: stacked in one forward
        "odd/gray.png": encode(Image.fromarray(picture(64, 64, 3)).convert("L")),
        "odd/cmyk.jpg": encode(Image.fromarray(picture(64, 64, 4)).convert("CMYK"), "JPEG"),
        "odd/rgba.png": encode(Image.fromarray(picture(64, 64, 5)).convert("RGBA")),
        "odd/16bit.png": encode(
            Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64) * 16)
        ),
        "odd/one-pixel.png": encode(picture(1, 1, 6)),
    }
    return {**good, **bad}, set(bad)


def upload(s3, prefix: str, files: dict[str, bytes]) -> None:
    client = s3.client()
    for key, data in files.items():
        client.put_object(Bucket=s3.bucket, Key=f"{prefix}/{key}", Body=data)


def mask_objects(s3, prefix: str) -> dict[str, tuple]:
    """mask key -> (LastModified, ETag) of every mask PNG under `prefix`."""
    client = s3.client()
    found = {}
    for key in s3.keys(prefix):
        if key.endswith(".png") and "/_" not in key[len(prefix) :]:  # _reports/ are not masks
            head = client.head_object(Bucket=s3.bucket, Key=key)
            found[key[len(prefix) + 1 :]] = (head["LastModified"], head["ETag"])
    return found


def row_mask(s3, prefix: str, key: str) -> str:
    return s3.uri(f"{prefix}/masks/{masks.mask_key(key)}")


def run_manifest(logs: str) -> list[dict]:
    uri = next(line.split()[-1] for line in logs.splitlines() if line.startswith("manifest:"))
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()


@pytest.fixture(scope="module")
def model(s3, tmp_path_factory):
    """The checkpoint on S3 and registered in MLflow under alias `champion`: FCN-32s at 1/16
    width (1 MB; every night's actors load it, and FCN-AlexNet's 230 MB cost seconds each)."""
    net = varied_model(NUM_CLASSES, "fcn32s", biases=True, width=0.0625)
    config = {"model": "fcn32s", "num_classes": NUM_CLASSES, "preprocessing": "torchvision",
              "width": 0.0625}  # fmt: skip
    local = str(tmp_path_factory.mktemp("segment") / "checkpoint")
    checkpoint.save(net.state_dict(), config, local)
    remote = s3.uri("segment/checkpoint")
    checkpoint.save(net.state_dict(), config, remote)
    return {"net": net, "config": config, "local": local, "s3": remote}


def expected_mask(model, data: bytes) -> np.ndarray:
    image = images.decode_image(data, max_pixels=10**8)
    with torch.inference_mode():
        logits = model["net"](normalize(image, model["config"]["preprocessing"])[None])
    return logits.argmax(1)[0].numpy()


def register(model, mlflow_server) -> str:
    import mlflow
    from mlflow import MlflowClient

    # MLFLOW_TRACKING_URI already names the server (fixture). mlflow.set_tracking_uri would
    # pin it for the rest of the session, over later tests' own MLFLOW_TRACKING_URI.
    assert mlflow.get_tracking_uri() == mlflow_server.uri
    mlflow.set_experiment("segment-test-registry")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(model["local"], "checkpoint")
    client = MlflowClient()
    client.create_registered_model(MODEL_NAME)
    version = client.create_model_version(
        MODEL_NAME, source=f"runs:/{run.info.run_id}/checkpoint", run_id=run.info.run_id
    )
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    return version.version


def test_nightly_runs_on_s3_are_incremental_and_load_the_registry_alias(
    s3, mlflow_server, ray_head, model
):
    files, bad = first_night_images()
    upload(s3, "night/images", files)
    env = {**s3.env, **mlflow_server.env}
    args = [
        "jobs/segment.py", "--input", s3.uri("night/images"), "--output", s3.uri("night/masks"),
        "--model", model["s3"], "--max-pixels", "20000", "--batch-size", "4",
    ]  # fmt: skip

    # Night 1: good and bad images. 6 of 14 failed > default --max-error-fraction: exit 1.
    rc, logs = ray_head.submit(args, env=env)
    assert "6 failed of 14 images" in logs, logs[-4000:]
    assert rc != 0 and "exceeds --max-error-fraction" in logs
    rows = {r["uri"]: r for r in run_manifest(logs)}
    assert len(rows) == len(files)
    for key, data in files.items():
        row = rows[s3.uri(f"night/images/{key}")]
        if key in bad:
            assert row["status"] == "error" and row["error"], row
            continue
        assert row["status"] == "ok", row
        assert row["mask_uri"] == s3.uri(f"night/masks/{masks.mask_key(key)}")
        png = Image.open(io.BytesIO(storage.read_bytes(row["mask_uri"])))
        assert png.mode == "P"
        assert np.array_equal(np.asarray(png.getpalette()).reshape(-1, 3), voc_colormap())
        expected = expected_mask(model, data)
        assert np.array_equal(np.asarray(png), expected), key
        assert row["class_counts"] == np.bincount(expected.ravel(), minlength=4).tolist()
    assert "empty file" in rows[s3.uri("night/images/bad/empty.jpg")]["error"]
    assert "animated" in rows[s3.uri("night/images/bad/animated.png")]["error"]
    assert "max-pixels" in rows[s3.uri("night/images/bad/huge.png")]["error"]
    written = mask_objects(s3, "night/masks")
    assert set(written) == {masks.mask_key(k) for k in files if k not in bad}

    # Night 2: nothing changed -> nothing written, every row skipped, exit 0.
    rc, logs = ray_head.submit(args, env=env)
    assert rc == 0, logs[-4000:]
    assert run_manifest(logs) == []  # unchanged images are counts, not rows
    assert mask_objects(s3, "night/masks") == written

    # Night 3: two new images; the model now comes from the registry alias.
    version = register(model, mlflow_server)
    new = good_images(3, 2)
    upload(s3, "night/images", new)
    args[args.index("--model") + 1] = f"models:/{MODEL_NAME}@champion"
    rc, logs = ray_head.submit(args, env=env)
    assert "2 done, 14 skipped, 0 failed" in logs, logs[-4000:]
    assert rc == 0
    done = [r for r in run_manifest(logs) if r["status"] == "ok"]
    assert sorted(r["uri"] for r in done) == sorted(s3.uri(f"night/images/{k}") for k in new)
    assert {r["model"] for r in done} == {f"models:/{MODEL_NAME}/{version}"}
    for key, data in new.items():
        png = Image.open(io.BytesIO(storage.read_bytes(row_mask(s3, "night", key))))
        assert np.array_equal(np.asarray(png), expected_mask(model, data))
    after = mask_objects(s3, "night/masks")
    assert {k: v for k, v in after.items() if k in written} == written

    # Each run left an MLflow run with its counts.
    import mlflow

    runs = mlflow.search_runs(experiment_names=["segment"], output_format="list")
    runs = [r for r in runs if r.data.params.get("output") == s3.uri("night/masks")]
    counts = sorted((r.data.metrics["done"], r.data.metrics["skipped"]) for r in runs)
    assert counts == [(0.0, 14.0), (2.0, 14.0), (8.0, 0.0)]


def _kill_driver(marker: str) -> int:
    """SIGKILL, by PID, the job driver whose command line names `marker`."""
    killed = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "jobs/segment.py" in cmdline and marker in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def test_killed_run_rerun_gives_exactly_one_whole_mask_per_image(s3, ray_head, model):
    files = {f"k/img_{i:02d}.png": encode(picture(128, 128 + i, 50 + i)) for i in range(10)}
    upload(s3, "killed/images", files)
    args = [
        "jobs/segment.py", "--input", s3.uri("killed/images"), "--output",
        s3.uri("killed/masks"), "--model", model["s3"], "--batch-size", "1",
    ]  # fmt: skip
    ray_head.submit_no_wait(args, env=s3.env)
    deadline = time.monotonic() + 180
    while not mask_objects(s3, "killed/masks") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _kill_driver(s3.uri("killed/masks")) >= 1
    at_kill = len(mask_objects(s3, "killed/masks"))
    assert 0 < at_kill < len(files), "the run must be killed mid-way"

    rc, logs = ray_head.submit(args, env=s3.env)
    assert rc == 0, logs[-4000:]
    rows = run_manifest(logs)  # only what the rerun segmented; finished batches are counts
    assert {r["status"] for r in rows} == {"ok"}
    assert f"{len(rows)} done, {len(files) - len(rows)} skipped, 0 failed" in logs, logs[-3000:]
    final = mask_objects(s3, "killed/masks")
    assert set(final) == {masks.mask_key(k) for k in files}  # one per image, nothing else
    for key, data in files.items():
        png = Image.open(io.BytesIO(storage.read_bytes(row_mask(s3, "killed", key))))
        png.load()  # a truncated PNG fails here
        assert png.size == Image.open(io.BytesIO(data)).size


def state_rows(s3, prefix: str) -> dict[str, dict]:
    """The state as any reader sees it: every file under `_state/`, latest row per uri."""
    table, _ = state.read(storage.locate(s3.uri(f"{prefix}/masks")))
    return {r["uri"]: r for r in table.to_pylist()}


def test_overlapping_runs_and_a_run_killed_in_the_merge_lose_nothing(s3, ray_head, model):
    files = {f"o/img_{i}.png": encode(picture(64, 64 + 8 * (i % 3), 70 + i)) for i in range(8)}
    upload(s3, "overlap/images", files)
    args = [
        "jobs/segment.py", "--input", s3.uri("overlap/images"), "--output",
        s3.uri("overlap/masks"), "--model", model["s3"], "--batch-size", "2",
    ]  # fmt: skip
    runtime_env = json.dumps({"env_vars": {**RAY_ENV, **s3.env}})
    cmd = [
        str(BIN / "ray"), "job", "submit", "--address", ray_head.address, "--working-dir",
        str(REPO), "--runtime-env-json", runtime_env, "--", "python", *args,
    ]  # fmt: skip
    env = {**os.environ, **RAY_ENV}
    both = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)]
    both.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in both]
    assert [p.returncode for p in both] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    expected = {masks.mask_key(k) for k in files}
    assert set(mask_objects(s3, "overlap/masks")) == expected  # one mask per image
    rows = state_rows(s3, "overlap")
    assert set(rows) == {s3.uri(f"overlap/images/{k}") for k in files}
    assert {r["status"] for r in rows.values()} == {"ok"}

    # Two new images; the run dies (as if SIGKILLed) once its snapshot is written, before
    # it deletes what it folded. The next run must find everything done.
    new = good_images(8, 2)
    upload(s3, "overlap/images", new)

    def snapshots():
        return {k for k in s3.keys("overlap/masks/_state/") if "/snapshot-" in k}

    before = snapshots()
    dies = ["tests/integration/segment_dies_in_merge.py", *args[1:]]  # test-only entry point
    rc, logs = ray_head.submit(dies, env=s3.env)
    assert rc != 0, logs[-3000:]
    after = snapshots()  # it died between writing its snapshot and deleting what it folded
    assert before < after and len(after - before) == 1, (before, after)
    rc, logs = ray_head.submit(args, env=s3.env)
    assert rc == 0 and "0 done, 10 skipped, 0 failed" in logs, logs[-3000:]
    rows = state_rows(s3, "overlap")
    assert len(rows) == 10 and {r["status"] for r in rows.values()} == {"ok"}
    assert set(mask_objects(s3, "overlap/masks")) == expected | {masks.mask_key(k) for k in new}
    assert len(snapshots()) == 1 and not [k for k in s3.keys("overlap/masks/_state/parts/")]


def test_a_parquet_split_on_s3_is_read_through_pyarrow_and_skipped_when_unchanged(
    s3, ray_head, model, tmp_path
):
    """An ingested split (`uri` + `image`) on the S3 server: masks at `<output>/<uri without
    scheme>.png`, the labeling queue's images read back from the split, and a second night
    that finds every row unchanged by the hash of its bytes. A raster in the split is a
    reference (`image` null): read from its bucket, its mask a GeoTIFF, unchanged the second
    night by its object's size and time."""
    files = {
        f"s3://cams/raw/img_{i}.png": encode(picture(64, 72 + 8 * i, 90 + i)) for i in range(5)
    }
    raster = s3.uri("split-rasters/scene.tif")
    s3.client().upload_file(geotiff(tmp_path / "scene.tif", 200, 300), s3.bucket,
                            "split-rasters/scene.tif")  # fmt: skip
    buffer = io.BytesIO()
    uris, data = [*files, raster], [*files.values(), None]
    pq.write_table(pa.table({"uri": uris, "image": pa.array(data, pa.binary())}), buffer)
    s3.client().put_object(Bucket=s3.bucket, Key="split/unlabeled/part-0.parquet",
                           Body=buffer.getvalue())  # fmt: skip
    args = [
        "jobs/segment.py", "--input", s3.uri("split/unlabeled"), "--output",
        s3.uri("split/masks"), "--model", model["s3"], "--batch-size", "2", "--queue-size", "2",
        "--queue-strategy", "entropy",  # never a shorter queue: exactly two exported
    ]  # fmt: skip
    rc, logs = ray_head.submit(args, env=s3.env)
    assert rc == 0 and "6 done, 0 skipped, 0 failed" in logs, logs[-4000:]
    mask = storage.read_bytes(s3.uri(f"split/masks/{s3.bucket}/split-rasters/scene.tif"))
    assert mask.startswith((b"II*\x00", b"MM\x00*"))  # a TIFF (its georeference: unit tests)
    for uri, data in files.items():
        key = masks.mask_key(uri.removeprefix("s3://"))
        png = Image.open(io.BytesIO(storage.read_bytes(s3.uri(f"split/masks/{key}"))))
        assert np.array_equal(np.asarray(png), expected_mask(model, data)), uri
    report = next(line.split()[1] for line in logs.splitlines() if line.startswith("report:"))
    with zipfile.ZipFile(io.BytesIO(storage.read_bytes(f"{report}/cvat.zip"))) as archive:
        assert len([n for n in archive.namelist() if n.startswith("JPEGImages/")]) == 2

    rc, logs = ray_head.submit(args, env=s3.env)
    assert rc == 0 and "0 done, 6 skipped, 0 failed" in logs, logs[-4000:]
