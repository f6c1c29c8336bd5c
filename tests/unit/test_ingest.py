"""Ingest: validation of every bad-input kind, split planning, and the Ray Data pipeline."""

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures.hostile import bomb_png, plant_bad_inputs
from PIL import Image

from fcn.config import IngestConfig
from fcn.data import contract, ingest, plan, shards, synthetic, validate, voc
from fcn.data.validate import Rejected
from fcn.engine import images
from fcn.engine.classes import voc_classes, voc_colormap


def _jpeg(h=40, w=50):
    # Noise, so that half the file is pixel data (a flat JPEG is nearly all header).
    pixels = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return synthetic.encode_jpeg(pixels)


def _png_mask(label):
    return images.encode_mask(label, voc_colormap())


def _rec(source="voc", mask=True):
    return voc.Record("s3://b/img.jpg", "s3://b/m.png" if mask else None, "train", source, "x")


def _reason(record, image, mask, num_classes=21):
    with pytest.raises(Rejected) as info:
        validate.validate_record(record, image, mask, num_classes, 64_000_000)
    return info.value.reason


def test_valid_row_keeps_original_image_bytes_and_class_index_mask():
    label = np.zeros((40, 50), np.uint8)
    label[10:20, 10:20] = 7
    label[9, 9] = 255
    image = _jpeg()
    row = validate.validate_record(_rec(), image, _png_mask(label), 21, 10**8)
    assert row["image"] is image and (row["height"], row["width"]) == (40, 50)
    decoded = Image.open(io.BytesIO(row["mask"]))
    assert decoded.mode == "L" and np.array_equal(np.asarray(decoded), label)
    unlabeled = validate.validate_record(_rec(mask=False), image, None, 21, 10**8)
    assert unlabeled["mask"] is None


def test_every_bad_input_kind_gets_its_reason():
    image, label = _jpeg(), np.zeros((40, 50), np.uint8)
    assert _reason(_rec(), b"", _png_mask(label)) == "empty_image"
    assert _reason(_rec(), b"garbage" * 5, _png_mask(label)) == "corrupt_image"
    assert _reason(_rec(), image[: len(image) // 2], _png_mask(label)) == "truncated_image"
    assert _reason(_rec(), bomb_png(), _png_mask(label)) == "decompression_bomb"
    assert _reason(_rec(), FileNotFoundError("x"), None) == "missing_image"
    assert _reason(_rec(), PermissionError("x"), None) == "read_error"
    assert _reason(_rec(), image, FileNotFoundError("m")) == "missing_mask"
    assert _reason(_rec(), image, b"") == "empty_mask"
    assert _reason(_rec(), image, b"\x89PNG nope") == "corrupt_mask"
    assert _reason(_rec(), image, _png_mask(label[:30])) == "mask_size_mismatch"
    bad = label.copy()
    bad[0, 0] = 21
    assert _reason(_rec(), image, _png_mask(bad)) == "bad_label_values"
    assert _reason(_rec(), image, _png_mask(label + 3), num_classes=3) == "bad_label_values"
    rgb = io.BytesIO()
    Image.new("RGB", (50, 40)).save(rgb, "PNG")
    assert _reason(_rec(), image, rgb.getvalue()) == "corrupt_mask"
    assert _reason(_rec("sbd"), image, b"MATLAB junk") == "corrupt_mask"
    assert _reason(_rec("sbd"), image, b"") == "empty_mask"
    frames = [Image.new("RGB", (50, 40), (k, 0, 0)) for k in range(2)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    assert _reason(_rec(), gif.getvalue(), _png_mask(label)) == "unsupported_image"
    assert _reason(_rec("sbd"), image, synthetic.encode_sbd_mat(label[:, :20])) == (
        "mask_size_mismatch"
    )


def test_max_pixels_is_checked_before_decoding():
    with pytest.raises(Rejected, match="max-pixels 1999"):
        validate.check_image(_jpeg(40, 50), "u", max_pixels=1999)
    assert validate.check_image(_jpeg(40, 50), "u", max_pixels=2000) == (40, 50)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    result = synthetic.generate(
        root / "voc", root / "sbd", root / "unl", num_images=6, seed=4, min_size=48, max_size=64
    )
    planted = plant_bad_inputs(root / "voc", root / "sbd", root / "unl")
    return root, result, planted


def _config(root, output, **kw):
    return IngestConfig(
        output=str(output),
        voc=kw.pop("voc", str(root / "voc")),
        sbd=kw.pop("sbd", str(root / "sbd")),
        unlabeled=kw.pop("unlabeled", str(root / "unl")),
        **kw,
    )


def test_plan_default_merges_lists_and_voc_label_wins(sources, tmp_path):
    root, result, _ = sources
    records, notes = plan.plan_records(_config(root, tmp_path))
    train = {r.image_id: r for r in records["train"]}
    expected = set(result.voc["train"]) | set(result.sbd["train"])
    assert set(train) - {p["image_id"] for p in _planted(sources)} == expected
    for image_id in set(result.voc["train"]) & set(result.sbd["train"]):
        assert train[image_id].source == "voc"
    assert [r.image_id for r in records["val"]] == sorted(r.image_id for r in records["val"])
    assert len(records["unlabeled"]) == len(result.unlabeled) + 4  # + planted, no README.txt
    assert notes["label_precedence"] == "voc"


def _planted(sources):
    return sources[2]


def test_plan_reference_preset_keeps_val_out_of_train(sources, tmp_path):
    root, result, _ = sources
    config = _config(root, tmp_path, preset="reference", unlabeled=None)
    records, notes = plan.plan_records(config)
    assert set(records) == {"train", "val"}
    train_ids = {r.image_id for r in records["train"]}
    assert all(r.source == "sbd" for r in records["train"])
    assert not train_ids & {r.image_id for r in records["val"]}
    assert {r.image_id for r in records["val"]} == set(result.voc["val"]) - train_ids
    assert notes["ids_in_several_splits"] == 0


def test_plan_named_split_lists(sources, tmp_path):
    root, result, _ = sources
    ids = tmp_path / "mine.txt"
    ids.write_text("\n".join([result.voc["val"][0], result.sbd["val"][0]]) + "\n")
    config = _config(root, tmp_path, split=(f"mine={ids}",), unlabeled=None)
    records, _ = plan.plan_records(config)
    assert list(records) == ["mine"]
    by_id = {r.image_id: r for r in records["mine"]}
    assert by_id[result.voc["val"][0]].source == "voc"
    if result.sbd["val"][0] not in set(result.voc["trainval"]):
        assert by_id[result.sbd["val"][0]].source == "sbd"
    with pytest.raises(ValueError, match="NAME=IDS_FILE"):
        plan.plan_records(_config(root, tmp_path, split=("nofile",)))
    with pytest.raises(ValueError, match="split name"):
        plan.plan_records(_config(root, tmp_path, split=(f"../x={ids}",)))
    with pytest.raises(ValueError, match="does not exist"):
        plan.plan_records(_config(root, tmp_path, split=(f"x={tmp_path}/none.txt",)))
    with pytest.raises(ValueError, match="source"):
        plan.plan_records(IngestConfig(output=str(tmp_path)))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def test_pipeline_writes_good_rows_rejects_bad_and_reruns_identically(local_ray, sources, tmp_path):
    root, result, planted = sources
    out = tmp_path / "out"
    config = _config(root, out, rows_per_shard=4, rows_per_row_group=2)
    done = ingest.run(ingest.check_config(config))

    planned, _ = plan.plan_records(config)
    bad = {(p["split"], p["image_id"]): p["reason"] for p in planted}
    for split, records in planned.items():
        table = pq.read_table(out / split)
        assert table.schema.equals(contract.SCHEMA)
        rows = table.to_pylist()
        ids = [r["image_id"] for r in rows]
        assert len(ids) == len(set(ids))  # nothing duplicated
        good = [r for r in records if (split, r.image_id) not in bad]
        assert sorted(ids) == sorted(r.image_id for r in good)  # nothing lost
        by_id = {r.image_id: r for r in good}
        for row in rows:
            record = by_id[row["image_id"]]
            assert row["split"] == split and row["source"] == record.source
            assert row["image"] == Path(record.image_uri).read_bytes()
            assert row["uri"] == record.image_uri
            if record.mask_uri is None:
                assert row["mask"] is None
                continue
            source_mask = Path(record.mask_uri).read_bytes()
            expected = (
                voc.decode_sbd_mask(source_mask)
                if record.source == "sbd"
                else images.decode_mask(source_mask)
            )
            assert np.array_equal(images.decode_mask(row["mask"]), expected)
            assert expected.shape == (row["height"], row["width"])
        assert done.splits[split].written == len(rows)

    errors = pq.read_table(out / "_errors").to_pylist()
    assert {(e["split"], e["image_id"]): e["reason"] for e in errors} == bad
    assert all(e["uri"] and e["detail"] for e in errors)
    assert done.rejected == len(bad)
    assert sum(done.rejected_by_reason.values()) == len(bad)
    assert (out / "_SUCCESS").read_text() == done.summary_text()
    success = json.loads((out / "_SUCCESS").read_text())
    assert success == done.summary() and success["num_classes"] == 21
    assert success["rejected"] == len(bad) and success["splits"]["val"]["written"] > 0
    assert success["classes"]["names"][15] == "person"

    before = _files(out)
    assert ingest.run(ingest.check_config(config)) == done
    assert _files(out) == before  # a second run changes nothing

    # Fewer, larger shards: the old part files must go, or readers would see duplicates.
    ingest.run(ingest.check_config(_config(root, out, rows_per_shard=100)))
    for split, records in planned.items():
        assert len(list((out / split).glob("part-*.parquet"))) == 1
        n = pq.read_table(out / split).num_rows
        assert n == sum(1 for r in records if (split, r.image_id) not in bad)
    assert len(pq.read_table(out / "_errors").to_pylist()) == len(bad)


def test_custom_class_list_set_validates_labels_and_lands_in_summary(local_ray, tmp_path):
    classes = synthetic.custom_classes()
    root = tmp_path / "voc5"
    result = synthetic.generate(root, num_images=4, seed=3, min_size=40, max_size=56,
                                class_list=classes)  # fmt: skip
    # One label one past the list (5 = num_classes), and a sideways photo (EXIF 6).
    over = result.voc["val"][0]
    mask_file = root / "SegmentationClass" / f"{over}.png"
    label = images.decode_mask(mask_file.read_bytes())
    label[:2, :2] = classes.num_classes
    mask_file.write_bytes(images.encode_mask(label, classes.palette()))
    synthetic.add_sideways_image(root, "2098_000001", "val", class_list=classes)
    out = tmp_path / "out"
    config = IngestConfig(output=str(out), voc=str(root), classes=str(root / "classes.json"))
    result = ingest.run(ingest.check_config(config))

    assert (
        result.classes == classes
        and result.summary()["num_classes"] == 5
        and contract.read_classes(str(out)) == classes
    )
    (error,) = pq.read_table(out / "_errors").to_pylist()
    assert (error["image_id"], error["reason"]) == (over, "bad_label_values")
    assert "values 5 outside 0..4" in error["detail"]
    rows = {r["image_id"]: r for r in pq.read_table(out / "val").to_pylist()}
    assert (rows["2098_000001"]["height"], rows["2098_000001"]["width"]) == (48, 80)
    written = pq.read_table(out / "train").to_pylist() + list(rows.values())
    assert len(written) == 4  # 4 generated + the sideways one - the one over the list
    for row in written:
        assert set(np.unique(images.decode_mask(row["mask"])).tolist()) <= {0, 1, 2, 3, 4, 255}


def test_read_classes_needs_no_ray_and_defaults_to_voc(tmp_path):
    (tmp_path / "_SUCCESS").write_text(json.dumps({"format": contract.FORMAT, "written": 0}))
    assert contract.read_classes(str(tmp_path)) == voc_classes()
    code = (
        "import sys; from fcn.data.contract import read_classes; "
        f"assert read_classes({str(tmp_path)!r}).num_classes == 21; "
        "assert 'ray' not in sys.modules, 'importing ingest started to import ray'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_unforeseen_decoder_failure_becomes_an_error_row(monkeypatch, tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(_jpeg())
    record = voc.Record(str(image), None, "unlabeled", "unlabeled", "a.jpg")

    def boom(*args):
        raise RuntimeError("decoder exploded")

    monkeypatch.setattr(validate, "validate_record", boom)
    shard = plan.Shard("unlabeled", 0, (record,))
    counts = shards.write_shard(shard, str(tmp_path / "out"), 21, 10**8, 4, 2)
    assert counts["written"] == 0 and counts["rejected"] == 1
    (error,) = pq.read_table(tmp_path / "out" / shard.error_key).to_pylist()
    assert error["reason"] == "unexpected_error" and "exploded" in error["detail"]
    assert pq.read_table(tmp_path / "out" / shard.key).num_rows == 0


def _ingest_job():
    """jobs/ingest.py as a module (the jobs are scripts, not a package)."""
    path = Path(__file__).parents[2] / "jobs" / "ingest.py"
    spec = importlib.util.spec_from_file_location("job_ingest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_job_checks_its_settings_once(local_ray, monkeypatch, tmp_path, capsys):
    """Defect 3a: jobs/ingest.py checked the config, then `run` checked it again (the sources
    listed twice: on S3, a second walk of the unlabeled prefix)."""
    root = tmp_path / "voc"
    synthetic.generate(root, num_images=2, seed=0, min_size=32, max_size=40)
    calls = []
    check = ingest.check_config

    def counted(config):
        calls.append(config)
        return check(config)

    monkeypatch.setattr(ingest, "check_config", counted)
    out = tmp_path / "out"
    assert _ingest_job().main(["--voc", str(root), "--output", str(out)]) == 0
    assert len(calls) == 1
    assert f"summary: {out}/_SUCCESS" in capsys.readouterr().out


def test_run_takes_a_checked_config_only(tmp_path):
    with pytest.raises(TypeError, match="check_config"):
        ingest.run(IngestConfig(output=str(tmp_path)))


def test_a_bad_class_file_is_a_settings_error(tmp_path, capsys):
    root = tmp_path / "voc"
    synthetic.generate(root, num_images=2, seed=0, min_size=32, max_size=40)
    bad = tmp_path / "classes.txt"
    bad.write_text("road 1 2\n")
    argv = ["--voc", str(root), "--output", str(tmp_path / "out"), "--classes", str(bad)]
    assert _ingest_job().main(argv) == 2
    assert capsys.readouterr().err.startswith("error: class file line 1")
    assert not (tmp_path / "out").exists()


def test_unlabeled_rasters_become_references_from_their_header(tmp_path):
    """An unlabeled raster is a row without bytes (`image` null): its size read from the header,
    never its pixels; a raster with no RGB reading, a broken one and a vanished one are error
    rows like bad photos. A prefix of rasters alone is a valid source."""
    from helpers_data import geotiff

    src = tmp_path / "bucket"
    (src / "aerial").mkdir(parents=True)
    geotiff(src / "aerial" / "scene.TIF", 300, 520)
    geotiff(src / "five.tif", 40, 40, bands=5)
    (src / "broken.tiff").write_bytes(b"II*\x00 not a raster")
    config = ingest.check_config(IngestConfig(output=str(tmp_path / "out"), unlabeled=str(src)))
    records, _ = plan.plan_records(config.config)
    listed = [r.image_id for r in records["unlabeled"]]
    assert listed == ["aerial/scene.TIF", "broken.tiff", "five.tif"]
    gone = voc.Record(str(src / "gone.tif"), None, "unlabeled", "unlabeled", "gone.tif")
    shard = plan.Shard("unlabeled", 0, (*records["unlabeled"], gone))
    # A pixel cap under the raster's 156,000 pixels: a reference is never decoded whole (the
    # cap guards each window the segment job reads).
    counts = shards.write_shard(shard, str(tmp_path / "out"), 21, 10**5, 4, 2)
    assert (counts["written"], counts["rejected"], counts["image_bytes"]) == (1, 3, 0)
    table = pq.read_table(tmp_path / "out" / shard.key)
    assert table.schema.equals(contract.SCHEMA)
    (row,) = table.to_pylist()
    assert (row["image"], row["height"], row["width"]) == (None, 300, 520)  # the header's
    assert row["uri"] == str(src / "aerial" / "scene.TIF") and row["mask"] is None
    errors = {Path(e["uri"]).name: e["reason"] for e in
              pq.read_table(tmp_path / "out" / shard.error_key).to_pylist()}  # fmt: skip
    assert errors == {"five.tif": "unsupported_image", "broken.tiff": "corrupt_image",
                      "gone.tif": "missing_image"}  # fmt: skip
