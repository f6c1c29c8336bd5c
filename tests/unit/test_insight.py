"""The nightly insight's statistics, distances, references and queue against hand-computed
values (docs/insight.md)."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import scenes
from PIL import Image

from fcn import storage
from fcn.config import IngestConfig, SegmentConfig
from fcn.data import contract, ingest, synthetic
from fcn.engine import images
from fcn.engine.classes import ClassList
from fcn.nightly import cvat, drift, insight, manifest, queue, state

CLASSES = ClassList.from_names(("background", "car", "tree"))


def night(counts, status=None, entropy=None, prefix="img") -> pa.Table:
    """A run manifest: one row per class-count list (None: no counts recorded)."""
    rows = []
    for i, c in enumerate(counts):
        rows.append({
            "uri": f"s3://b/{prefix}{i}.jpg", "mask_uri": f"s3://b/m/{prefix}{i}.png",
            "status": (status or ["ok"] * len(counts))[i], "class_counts": c,
            "mean_entropy": None if entropy is None else entropy[i],
        })  # fmt: skip
    return manifest.to_table(rows)


def test_js_distance_hand_computed():
    assert drift.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)  # disjoint: the bound
    assert drift.js_distance([0.2, 0.8, 0], [0.2, 0.8, 0]) == 0.0  # an empty class on both
    # m = (0.75, 0.25); KL(p||m) = 0.5 log2(2/3) + 0.5 log2(2) = 0.207519;
    # KL(q||m) = log2(4/3) = 0.415037; JS = 0.311278; distance = sqrt = 0.557923
    assert drift.js_distance([0.5, 0.5], [1, 0]) == pytest.approx(0.557923, abs=1e-6)
    assert drift.js_distance([1, 0], [0.5, 0.5]) == drift.js_distance([0.5, 0.5], [1, 0])


def test_per_class_is_this_class_against_the_rest():
    out = drift.per_class(np.array([0.5, 0.5, 0.0]), np.array([1.0, 0.0, 0.0]))
    assert out == pytest.approx([0.557923, 0.557923, 0.0], abs=1e-6)


def test_manifest_distribution_counts_ok_rows_with_counts_only():
    table = night([[3, 1, 0], [0, 4, 0], [9, 9, 9], None], status=["ok", "ok", "error", "ok"])
    found = drift.of_manifest(table, 3)
    assert found.pixels.tolist() == [3, 5, 0]
    assert found.image_counts.tolist() == [1, 2, 0]  # a class in an image at all
    assert found.images == 2
    assert found.pixel_shares() == pytest.approx([3 / 8, 5 / 8, 0])
    assert found.image_frequencies() == pytest.approx([0.5, 1.0, 0.0])


def test_an_empty_or_all_zero_night_has_no_distance():
    empty = drift.of_manifest(night([]), 3)
    zeros = drift.of_manifest(night([[0, 0, 0]]), 3)  # e.g. a zero-pixel image
    reference = drift.of_manifest(night([[1, 1, 0]]), 3)
    assert empty.images == 0 and empty.pixel_shares() is None
    assert drift.compare(empty, reference) is None
    assert drift.compare(zeros, reference) is None
    assert drift.compare(reference, zeros) is None


def test_compare_gives_both_views():
    tonight = drift.Distribution(np.array([1, 1, 0]), np.array([1, 1, 0]), 1)
    reference = drift.Distribution(np.array([2, 0, 0]), np.array([2, 0, 0]), 2)
    out = drift.compare(tonight, reference)
    assert out.pixel == pytest.approx(0.557923, abs=1e-6)
    # occurrences tonight (1/2, 1/2, 0) vs reference (1, 0, 0): the same numbers
    assert out.image == pytest.approx(0.557923, abs=1e-6)
    # frequencies: car in 1 of 1 images vs 0 of 2: Bernoulli(1) vs Bernoulli(0) = 1
    assert out.image_per_class == pytest.approx([0.0, 1.0, 0.0])


def write_night(out: storage.Location, run_id: str, table: pa.Table) -> None:
    manifest.write(state.run_manifest(out, run_id), table)


def test_trailing_reference_sums_the_last_nights_that_segmented_something(tmp_path):
    out = storage.locate(str(tmp_path))
    write_night(out, "20260101T000000Z-a", night([[10, 0, 0]]))  # beyond the 2 nights
    write_night(out, "20260102T000000Z-b", night([[0, 2, 0]]))
    write_night(out, "20260103T000000Z-c", night([]))  # nothing segmented: not a night
    write_night(out, "20260104T000000Z-d", night([[0, 0, 2]]))
    write_night(out, "20260106T000000Z-f", night([[5, 5, 5]]))  # later than tonight
    total, used = insight.trailing(out, "20260105T000000Z-e", 3, nights=2)
    assert used == ["20260104T000000Z-d", "20260102T000000Z-b"]
    assert total.pixels.tolist() == [0, 2, 2] and total.images == 2


def config(**kwargs) -> SegmentConfig:
    return SegmentConfig("in", "out", "model", **kwargs)


def test_report_without_training_distribution_or_history_says_so(tmp_path):
    out = storage.locate(str(tmp_path))
    report = insight.drift_report(
        night([[1, 1, 0]]), CLASSES, None, out, "20260101T000000Z-a", config(drift_threshold=0.1)
    )
    assert report.distance is None and report.drift is False
    assert any("no training class distribution" in n for n in report.notes)
    assert any("no earlier night" in n for n in report.notes)
    assert insight.metrics(report) == {
        "share_background": 0.5, "share_car": 0.5, "share_tree": 0.0
    }  # fmt: skip


def test_report_flags_a_night_past_the_threshold_and_keeps_history(tmp_path):
    out = storage.locate(str(tmp_path))
    trained = {"pixel_counts": [2, 0, 0], "image_counts": [2, 0, 0], "images": 2}
    write_night(out, "20260101T000000Z-a", night([[4, 0, 0]]))
    first = insight.drift_report(
        night([[4, 0, 0]]), CLASSES, trained, out, "20260101T000000Z-a", config(drift_threshold=0.3)
    )
    assert first.distance == 0.0 and not first.drift
    insight.write(out, first)
    second = insight.drift_report(
        night([[1, 1, 0]]), CLASSES, trained, out, "20260102T000000Z-b", config(drift_threshold=0.3)
    )
    assert second.distance == pytest.approx(0.557923, abs=1e-6)
    assert second.drift is True
    assert [h["run_id"] for h in second.history] == ["20260101T000000Z-a", "20260102T000000Z-b"]
    assert second.to_dict()["references"]["trailing"]["nights"] == ["20260101T000000Z-a"]
    files = insight.write(out, second)
    assert files["drift.png"].startswith(b"\x89PNG")
    on_disk = json.loads((tmp_path / "_reports/20260102T000000Z-b/report.json").read_text())
    assert on_disk["drift"] is True
    metrics = insight.metrics(second)
    assert metrics["drift_distance"] == pytest.approx(0.557923, abs=1e-6)
    assert metrics["drift_training_pixel"] == metrics["drift_trailing_pixel"]
    assert math.isclose(metrics["drift_training_pixel_tree"], 0.0)
    assert "| car | 0.5000 | 0.0000 | 0.0000 |" in files["report.md"].decode()


def test_recorded_training_distribution_must_fit_the_class_list():
    with pytest.raises(ValueError, match="3 classes"):
        insight.training({"pixel_counts": [1, 2]}, 3)


def test_drift_settings_are_checked():
    with pytest.raises(ValueError, match="drift-threshold"):
        config(drift_threshold=1.5).validate()
    with pytest.raises(ValueError, match="queue-size"):
        config(queue_size=-1).validate()


# --- the labeling queue -------------------------------------------------------------------


def test_queue_ranks_by_entropy_ties_by_uri_and_skips_queued_and_failed():
    table = night(
        [[1, 0, 0]] * 5,
        status=["ok", "ok", "ok", "error", "ok"],
        entropy=[0.2, 0.9, 0.9, 5.0, None],
    )
    chosen = queue.select(table, pa.array(["s3://b/img9.jpg"]), 2, "r1")
    assert chosen.column("uri").to_pylist() == ["s3://b/img1.jpg", "s3://b/img2.jpg"]
    assert chosen.column("rank").to_pylist() == [1, 2]
    again = queue.select(table, pa.array(["s3://b/img1.jpg"]), 5, "r1")
    assert again.column("uri").to_pylist() == ["s3://b/img2.jpg", "s3://b/img0.jpg"]


def scene_night(tmp_path, count: int) -> tuple[pa.Table, dict]:
    """A night of `count` synthetic images with their masks written as segment would."""
    rng = np.random.default_rng(0)
    rows, image_bytes = [], {}
    for i in range(count):
        image, label = synthetic.render_scene(rng, 24, 32, (1, 2))
        uri = str(tmp_path / "in" / "cam" / f"{i}.png")
        mask_uri = str(tmp_path / "out" / "cam" / f"{i}.png")
        image_bytes[uri] = _png(image)
        storage.write_bytes(mask_uri, images.encode_mask(label, CLASSES.palette()))
        counts = np.bincount(label.ravel(), minlength=3).tolist()
        rows.append({"uri": uri, "mask_uri": mask_uri, "status": "ok", "class_counts": counts,
                     "mean_entropy": float(i % 3)})  # fmt: skip
    return manifest.to_table(rows), image_bytes


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_queue_files_and_a_second_night_never_requeue(tmp_path):
    table, image_bytes = scene_night(tmp_path, 5)
    out = storage.locate(str(tmp_path / "out"))
    read = lambda uris: {u: image_bytes[u] for u in uris}  # noqa: E731
    first = insight.labeling_queue(table, CLASSES, out, "20260101T000000Z-a", 3, read)
    ranked = pq.read_table(io.BytesIO(first["queue.parquet"]))
    assert ranked.column("score").to_pylist() == [2.0, 1.0, 1.0]
    assert first["queue.csv"].decode().splitlines()[0].startswith("rank,uri,")
    assert (tmp_path / "out/_reports/20260101T000000Z-a/cvat.zip").exists()
    second = insight.labeling_queue(table, CLASSES, out, "20260102T000000Z-b", 3, read)
    again = pq.read_table(io.BytesIO(second["queue.parquet"])).column("uri").to_pylist()
    assert len(again) == 2 and not set(again) & set(ranked.column("uri").to_pylist())
    third = insight.labeling_queue(table, CLASSES, out, "20260103T000000Z-c", 3, read)
    assert pq.read_table(io.BytesIO(third["queue.parquet"])).num_rows == 0


def test_cvat_export_ingests_as_a_voc_tree(tmp_path, local_ray):
    table, image_bytes = scene_night(tmp_path, 3)
    rows = queue.select(table, pa.array([], pa.string()), 3, "r").to_pylist()
    masks = {r["mask_uri"]: storage.read_bytes(r["mask_uri"]) for r in rows}
    archive = cvat.export(rows, CLASSES, image_bytes, masks)
    tree = tmp_path / "labeled"
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tree)
    assert (tree / "labelmap.txt").read_text().splitlines()[2] == "car:{}::".format(
        ",".join(map(str, CLASSES.colors[1]))
    )
    classes_file = tmp_path / "classes.json"
    classes_file.write_text(json.dumps(CLASSES.to_dict()))
    config = IngestConfig(
        str(tmp_path / "ds"), voc=str(tree), voc_splits=("default",), classes=str(classes_file)
    )
    summary = ingest.run(ingest.check_config(config))
    split = pq.read_table(tmp_path / "ds" / "default")
    assert split.num_rows == 3, summary
    by_id = {r["image_id"]: r for r in split.to_pylist()}
    for row in rows:
        mask = images.decode_mask(by_id[cvat.image_id(row["uri"])]["mask"])
        assert np.array_equal(mask, images.decode_mask(masks[row["mask_uri"]]))
    assert contract.read_classes(str(tmp_path / "ds")).names == CLASSES.names


def test_drift_scenes_are_foggy_or_dominated():
    rng = np.random.default_rng(0)
    normal, _ = synthetic.render_scene(rng, 32, 32, (1,))
    foggy, _ = scenes.drift_scene(rng, 32, 32, "fog")
    assert foggy.std() < normal.std() / 3
    _, label = scenes.drift_scene(rng, 32, 32, "dominant", cls=2)
    assert np.mean(label == 2) == 0.75
    with pytest.raises(ValueError, match="fog"):
        scenes.drift_scene(rng, 8, 8, "rain")


@pytest.mark.parametrize(
    "ok, drifted, status", [(True, False, 0), (True, True, 3), (False, True, 1), (False, False, 1)]
)
def test_exit_status_errors_win_over_drift(ok, drifted, status):
    from fcn.nightly.summary import Counts, Summary, exit_status

    counts = Counts(done=1, failed=0 if ok else 1, skipped=0, deferred=0, resegmented=0)
    summary = Summary("r", "m", "i", "o", "manifest", "report", counts, 0.0, 1.0, 1.0, drifted, 0.5)
    assert summary.ok is ok
    assert exit_status(summary) == status


# --- jobs/report.py -----------------------------------------------------------------------


def test_report_job_shows_the_nights_drift_and_queue_history(tmp_path, capsys):
    import importlib.util

    from fcn import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = storage.locate(str(tmp_path / "masks"))
    for night_id, distance, drifted in (
        ("20260101T0-a", 0.1, "false"),
        ("20260102T0-b", 0.4, "true"),
    ):
        folder = insight.report_dir(out, night_id)
        table = night([[1, 0, 0]] * 3, entropy=[1, 2, 3], prefix=night_id)
        chosen = queue.select(table, pa.array([], pa.string()), 2, night_id)
        folder.child("queue.parquet").write_bytes(queue.files(chosen)["queue.parquet"])
        tracking.log_run(
            "nightly", f"segment-{night_id}", {}, {"report": folder.uri, "drift": drifted},
            {"done": 3, "drift_distance": distance}, uri=uri,
        )  # fmt: skip
    tracking.log_run("nightly", "not-a-segment-run", {}, {}, {"x": 1}, uri=uri)
    spec = importlib.util.spec_from_file_location("report_job", "jobs/report.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    args = ["--experiment", "nightly", "--output", str(tmp_path / "r"), "--tracking-uri", uri]
    assert job.main(args) == 0
    text = (tmp_path / "r" / "history.md").read_text()
    assert "| 20260102T0-b | 3 | 0.4000 | DRIFT | 2 |" in text
    assert "| 20260101T0-a | 3 | 0.1000 |  | 2 |" in text
    assert (tmp_path / "r" / "drift.png").read_bytes().startswith(b"\x89PNG")
    assert job.main(["--experiment", "nope", "--tracking-uri", uri]) == 2
    assert "no MLflow experiment named 'nope'" in capsys.readouterr().err


def test_training_masks_distribution_leaves_void_out():
    from fcn.data.distribution import of_masks

    masks = [np.array([[0, 1], [255, 1]]), np.array([[2, 2], [2, 255]]), np.full((2, 2), 255)]
    found = of_masks(masks, 3)
    assert found.pixels.tolist() == [1, 2, 3]
    assert found.image_counts.tolist() == [1, 1, 1]
    assert found.images == 3  # an all-void mask is an image with no class
    assert drift.Distribution.from_dict(found.to_dict(), 3).pixels.tolist() == [1, 2, 3]
