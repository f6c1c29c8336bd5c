"""Fault drills through `ray job submit` on the test Ray head, S3 server and MLflow server.

Jobs reach S3 through a gate (`s3_gate.S3Gate`) that holds or refuses chosen requests, so each
fault hits an exact point, not a moment guessed with a timer:

- segment, SIGKILLed (its process group) while it lists the input, then while a mask write is
  in flight; then a night with the endpoint refusing requests: blips are retried with backoff,
  requests refused past the retries are error rows, the night finishes, and the next night
  does those images; in the same night 503 SlowDown answers (listing, read, write) are
  retried, a slow read waited for, and a body cut mid-transfer ends done or as an error row.
  Every image ends with exactly one whole mask; no image recorded done is done again.
  (test_segment_job.py drills a kill once masks exist and a kill in the merge.)
- ingest, SIGKILLed while a shard write is in flight: `_SUCCESS` is gone; a rerun completes.
"""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import kill_job
from helpers_data import varied_model
from PIL import Image
from s3_gate import S3Gate
from test_segment_job import encode, expected_mask, mask_objects, picture, run_manifest

from fcn import storage
from fcn.data import ingest, synthetic
from fcn.engine import checkpoint
from fcn.nightly import masks, state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HELD_WITHIN = 300  # seconds a job may take to reach the held request (a limit, not a wait)
ATTEMPTS = 2  # AWS_MAX_ATTEMPTS of the drilled jobs: an outage outlasts them quickly


@pytest.fixture(scope="module")
def gate(s3):
    gate = S3Gate(int(s3.endpoint_url.rsplit(":", 1)[1]))
    yield gate
    gate.close()


@pytest.fixture(scope="module")
def env(s3, gate):
    """The jobs' settings: S3 through the gate, few attempts per request."""
    return {**s3.env, "AWS_ENDPOINT_URL": gate.endpoint_url, "AWS_MAX_ATTEMPTS": str(ATTEMPTS)}


def kill_at_hold(ray_head, gate, args, env, marker: str) -> None:
    """Submit, wait until the gate holds the request a `gate.hold` rule names, then SIGKILL
    the job's process group. The held request stays held until `gate.reset()`: then it is cut
    (the server drops a request whose body never came)."""
    ray_head.submit_no_wait(args, env)
    assert gate.held.wait(HELD_WITHIN), "the job never reached the held request"
    assert kill_job(marker) >= 1


def name(uri: str) -> str:
    """The mask key of an image under `drill/images/` (they are all `img_*.png`)."""
    return masks.mask_key(uri.rsplit("/", 1)[1])


def upload(s3, files: dict[str, bytes]) -> None:
    for key, data in files.items():
        s3.client().put_object(Bucket=s3.bucket, Key=key, Body=data)


def test_segment_killed_and_cut_off_loses_nothing_and_finishes_next_night(
    s3, ray_head, gate, env, tmp_path
):
    # 1 MB, not FCN-AlexNet's 230 MB: every night's actors fetch it through the gate.
    net = varied_model(4, "fcn32s", biases=True, width=0.0625)
    config = {"model": "fcn32s", "num_classes": 4, "preprocessing": "torchvision", "width": 0.0625}
    model = {"net": net, "config": config}
    checkpoint.save(net.state_dict(), model["config"], s3.uri("drill/checkpoint"))
    # Distinct sizes: no two images share a forward, nothing depends on batching.
    files = {f"drill/images/img_{i}.png": encode(picture(40 + 4 * i, 48, 9 + i)) for i in range(4)}
    upload(s3, files)
    output = s3.uri("drill/masks")
    args = [
        "jobs/segment.py", "--input", s3.uri("drill/images"), "--output", output,
        "--model", s3.uri("drill/checkpoint"), "--batch-size", "1",
    ]  # fmt: skip

    # 1. Killed while planning (listing the input): nothing written.
    gate.hold("GET", "prefix=drill/images")
    kill_at_hold(ray_head, gate, args, env, output)
    gate.reset()
    assert mask_objects(s3, "drill/masks") == {}

    # 2. Killed with a mask write in flight (its request sent, its body not): that mask is
    # not there, not even in part; every mask that is there is whole.
    gate.hold("PUT", "/drill/masks/img_3.png")
    kill_at_hold(ray_head, gate, args, env, output)
    written = mask_objects(s3, "drill/masks")
    table, _ = state.read(storage.locate(output))
    gate.reset()
    assert "img_3.png" not in written
    for key in written:
        Image.open(io.BytesIO(storage.read_bytes(f"{output}/{key}"))).load()
    recorded = {name(r["uri"]) for r in table.to_pylist() if r["status"] == "ok"}
    assert recorded <= set(written)

    # 3. New images and an endpoint that drops requests. Blips (one refusal each, a manifest
    # part's write among them) are retried; img_a's read and img_c's mask write are refused
    # past the retries: error rows, and the night goes on to its end. Meanwhile the store
    # throttles (503 SlowDown on the listing, a read and a write: retried), is slow on a
    # read, and cuts a body mid-transfer (img_f: done if the read is retried, else an error
    # row the next night redoes).
    new = {
        f"drill/images/img_{c}.png": encode(picture(40, 60 + 4 * i, i))
        for i, c in enumerate("abcdef")
    }
    upload(s3, new)
    files.update(new)
    lost_read = gate.refuse("GET", "/drill/images/img_a.png", times=10**6)
    blip = gate.refuse("GET", "/drill/images/img_b.png", times=1)
    lost_write = gate.refuse("PUT", "/drill/masks/img_c.png", times=10**6)
    part_blip = gate.refuse("PUT", "/drill/masks/_state/parts/", times=1)
    storm = [
        gate.slowdown("GET", "prefix=drill/images"),
        gate.slowdown("GET", "/drill/images/img_d.png"),
        gate.slowdown("PUT", "/drill/masks/img_e.png"),
    ]
    slow = gate.slow("GET", "/drill/images/img_e.png", seconds=2)
    cut = gate.cut("GET", "/drill/images/img_f.png", after=50)
    rc, logs = ray_head.submit(args, env=env)
    gate.reset()
    counts = re.search(r"(\d+) done, (\d+) skipped, (\d+) failed", logs)
    assert counts, logs[-4000:]
    done, skipped, failed = map(int, counts.groups())
    assert rc == 1 and "exceeds --max-error-fraction" in logs  # finished, not crashed
    assert failed in (2, 3) and done + skipped + failed == len(files)
    assert skipped >= len(recorded)
    assert len(lost_read.hits) > ATTEMPTS and len(lost_write.hits) > ATTEMPTS  # retried
    assert len(blip.hits) == len(part_blip.hits) == 1
    assert [len(r.hits) for r in [*storm, slow, cut]] == [1] * 5
    rows = {name(r["uri"]): r for r in run_manifest(logs)}
    assert len(rows) == len(run_manifest(logs))  # one row per image: nothing twice
    assert rows.pop("img_a.png")["error"].startswith("read failed")
    assert rows.pop("img_c.png")["error"].startswith("mask write failed")
    if failed == 3:
        assert rows.pop("img_f.png")["error"].startswith("read failed")
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert {"img_b.png", "img_d.png", "img_e.png"} <= set(rows)
    assert not recorded & set(rows)  # nothing recorded done was done again
    after = mask_objects(s3, "drill/masks")
    assert {k: after[k] for k in recorded} == {k: written[k] for k in recorded}

    # 4. The endpoint is back: the next night does the cut-off images, nothing else.
    rc, logs = ray_head.submit(args, env=env)
    expected = f"{failed} done, {len(files) - failed} skipped, 0 failed"
    assert rc == 0 and expected in logs, logs[-4000:]
    assert set(mask_objects(s3, "drill/masks")) == {name(k) for k in files}  # one per image
    for key, data in files.items():
        mask = Image.open(io.BytesIO(storage.read_bytes(f"{output}/{name(key)}")))
        assert np.array_equal(np.asarray(mask), expected_mask(model, data)), key


def test_ingest_killed_mid_write_then_rerun_completes(s3, ray_head, gate, env, tmp_path):
    local = tmp_path / "voc"
    generated = synthetic.generate(local, num_images=6, seed=5, min_size=32, max_size=40)
    source = s3.upload_tree(local, "drill-ingest/voc")
    output = s3.uri("drill-ingest/out")
    # A dataset declared done by an earlier run: the new run must withdraw that first.
    storage.write_text(f"{output}/{ingest.SUCCESS}", json.dumps({"splits": {}}))
    args = ["jobs/ingest.py", "--voc", source, "--output", output, "--rows-per-shard", "2"]

    gate.hold("PUT", "/drill-ingest/out/train/")
    kill_at_hold(ray_head, gate, args, env, output)
    assert not storage.exists(f"{output}/{ingest.SUCCESS}")
    gate.reset()

    rc, logs = ray_head.submit(args, env=env, timeout=300)
    assert rc == 0, logs[-4000:]
    summary = json.loads(storage.read_text(f"{output}/{ingest.SUCCESS}"))
    assert set(summary["splits"]) == {"train", "val"}
    for split in summary["splits"]:
        ids = generated.voc[split]
        fs, path = storage.pyarrow_filesystem(f"{output}/{split}")
        found = pq.read_table(path, filesystem=fs, columns=["image_id"]).column("image_id")
        assert sorted(found.to_pylist()) == sorted(ids)  # complete, nothing twice
