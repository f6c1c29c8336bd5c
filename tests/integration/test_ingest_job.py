"""Ingest end to end: synthetic VOC + SBD + unlabeled (with planted bad inputs and a photo
stored sideways with EXIF orientation 6) on the S3 test server, `ray job submit` to the test
Ray head, Parquet read back from s3://."""

import json
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures.hostile import plant_bad_inputs

from fcn import storage
from fcn.data import contract, synthetic, voc
from fcn.engine import images

pytestmark = pytest.mark.integration


def _read_split(uri: str):
    fs, path = storage.pyarrow_filesystem(uri)
    return pq.read_table(path, filesystem=fs)


def _etags(s3, prefix: str) -> dict[str, str]:
    paginator = s3.client().get_paginator("list_objects_v2")
    return {
        obj["Key"]: obj["ETag"]
        for page in paginator.paginate(Bucket=s3.bucket, Prefix=prefix)
        for obj in page.get("Contents", [])
    }


def test_ingest_job_on_s3(s3, ray_head, tmp_path):
    local = tmp_path / "src"
    generated = synthetic.generate(
        local / "voc", local / "sbd", local / "unl", num_images=8, seed=11, min_size=48, max_size=80
    )
    planted = plant_bad_inputs(local / "voc", local / "sbd", local / "unl")
    sideways = "2098_000001"  # displayed 48 x 80 (H x W), stored 80 x 48
    synthetic.add_sideways_image(local / "voc", sideways, "val", orientation=6)
    sources = {
        name: s3.upload_tree(local / name, f"ingest-src/{name}") for name in ("voc", "sbd", "unl")
    }
    output = s3.uri("ingest-out/synthetic")
    args = [
        "jobs/ingest.py", "--voc", sources["voc"], "--sbd", sources["sbd"],
        "--unlabeled", sources["unl"], "--output", output, "--rows-per-shard", "5",
    ]  # fmt: skip

    rc, logs = ray_head.submit(args, env=s3.env, timeout=300)
    assert rc == 0, logs[-4000:]
    assert "summary: s3://" in logs
    # Ray Data's progress, as a job's log shows it (no terminal: logged lines, not bars).
    assert re.search(r"MapBatches\(_write_batch\): \d+/\d+", logs), logs[-4000:]

    def local_path(uri: str):
        for name, base in sources.items():
            if uri.startswith(base + "/"):
                return local / name / storage.relative_key(base, uri)
        raise AssertionError(f"{uri} is not under a source prefix")

    bad = {(p["split"], p["image_id"]): p["reason"] for p in planted}
    summary = json.loads(storage.read_text(f"{output}/_SUCCESS"))
    voc_train = set(generated.voc["train"]) | set(generated.sbd["train"])
    expected_ids = {
        "train": voc_train,
        "val": set(generated.voc["val"]) | set(generated.sbd["val"]) | {sideways},
        "unlabeled": set(generated.unlabeled),
    }
    assert set(summary["splits"]) == set(expected_ids)
    for split, ids in expected_ids.items():
        table = _read_split(f"{output}/{split}")
        assert table.schema.equals(contract.SCHEMA)
        rows = table.to_pylist()
        got = [r["image_id"] for r in rows]
        assert len(got) == len(set(got)) and set(got) == ids  # nothing lost or duplicated
        assert summary["splits"][split]["written"] == len(rows)
        for row in rows:
            assert row["image"] == local_path(row["uri"]).read_bytes()  # byte for byte
            assert row["split"] == split
            if split == "unlabeled":
                assert row["mask"] is None and row["source"] == "unlabeled"
                continue
            if row["source"] == "voc":
                mask_file = local / "voc" / "SegmentationClass" / f"{row['image_id']}.png"
                expected = images.decode_mask(mask_file.read_bytes())
            else:
                mask_file = local / "sbd" / "dataset" / "cls" / f"{row['image_id']}.mat"
                expected = voc.decode_sbd_mask(mask_file.read_bytes())
            mask = images.decode_mask(row["mask"])
            assert np.array_equal(mask, expected)
            assert mask.shape == (row["height"], row["width"])
            assert images.decode_image(row["image"]).shape[:2] == mask.shape  # as displayed
        if split == "val":
            (turned,) = [r for r in rows if r["image_id"] == sideways]
            assert (turned["height"], turned["width"]) == (48, 80)
        # Ids in both VOC and SBD lists of one split carry the VOC mask.
        shared = set(generated.voc.get(split, ())) & set(generated.sbd.get(split, ()))
        assert all(r["source"] == "voc" for r in rows if r["image_id"] in shared)

    errors = _read_split(f"{output}/_errors").to_pylist()
    assert {(e["split"], e["image_id"]): e["reason"] for e in errors} == bad
    for e in errors:
        assert e["uri"].startswith("s3://") and e["detail"]
    assert summary["rejected"] == len(bad)
    assert summary["classes"]["num_classes"] == 21

    before = _etags(s3, "ingest-out/synthetic/")
    rc, logs = ray_head.submit(args, env=s3.env, timeout=300)
    assert rc == 0, logs[-4000:]
    assert _etags(s3, "ingest-out/synthetic/") == before  # a second run changes nothing
