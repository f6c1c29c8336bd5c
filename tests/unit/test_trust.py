"""Trust in the units: hostile keys never take a mask over; no credential goes to workers."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fcn import storage, tracking
from fcn.config import SegmentConfig
from fcn.nightly import plan, schema

NO_MASKS = pa.array([], pa.string())


def locations(tmp_path):
    config = SegmentConfig(str(tmp_path / "in"), str(tmp_path / "out"), "m")
    return config, storage.locate(config.input), storage.locate(config.output)


def listing(paths) -> pa.Table:
    rows = [{"path": p, "size": 1, "mtime": 1.0} for p in paths]
    return pa.Table.from_pylist(rows, storage.WALK_SCHEMA)


@pytest.mark.parametrize("spelling", ["./victim.png", "x//victim.png", "x/y/../victim.png"])
def test_another_spelling_of_a_key_is_an_error_row_not_the_victims_mask(tmp_path, spelling):
    config, src, out = locations(tmp_path)
    victim = "x/victim.png" if spelling.startswith("x") else "victim.png"
    files = listing([f"{src.path}/{victim}", f"{src.path}/{spelling}"])
    work = plan.plan(files, schema.STATE.empty_table(), NO_MASKS, src, out, config, "m")
    assert work.todo.column("uri").to_pylist() == [f"{src.path}/{victim}"]
    assert work.refused.column("uri").to_pylist() == [f"{src.path}/{spelling}"]
    assert "another spelling" in work.refused.column("error")[0].as_py()


def test_a_later_nights_newcomer_never_takes_an_existing_mask_over(tmp_path):
    config, src, out = locations(tmp_path)
    owner, newcomer = f"{src.path}/a/x.png", f"{src.path}/a/x.jpg"  # x.jpg sorts first
    mask = f"{out.path}/a/x.png"
    night1 = schema.STATE.empty_table()
    first = plan.plan(listing([owner]), night1, NO_MASKS, src, out, config, "m")
    assert first.todo.column("mask_uri").to_pylist() == [mask]
    done = pa.Table.from_pylist(
        [{"uri": owner, "etag": first.todo["etag"][0].as_py(), "mask_uri": mask, "status": "ok"}],
        schema.STATE,
    )
    work = plan.plan(listing([newcomer, owner]), done, pa.array([mask]), src, out, config, "m")
    assert work.todo.num_rows == 0 and work.unchanged == 1
    assert work.refused.column("uri").to_pylist() == [newcomer]
    assert f"already taken by {owner}" in work.refused.column("error")[0].as_py()


def test_workers_get_settings_but_no_credential(monkeypatch):
    from fcn.training.driver import _worker_env

    for key, value in {
        "AWS_ACCESS_KEY_ID": "AKIDLEAK", "AWS_SECRET_ACCESS_KEY": "SECRETLEAK",
        "AWS_SESSION_TOKEN": "TOKENLEAK", "AWS_ENDPOINT_URL": "http://s3:9000",
        "AWS_DEFAULT_REGION": "eu-west-1", "MLFLOW_S3_ENDPOINT_URL": "http://s3:9000",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    env = _worker_env("http://mlflow:5000")
    assert "LEAK" not in repr(env)
    assert env["AWS_ENDPOINT_URL"] == "http://s3:9000" and env["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "MLFLOW_TRACKING_URI" not in _worker_env("http://user:PASSLEAK@mlflow:5000")


def test_tracking_env_keeps_a_password_out():
    assert tracking.tracking_env("http://u:PASSLEAK@host:5000") == {}
    assert tracking.tracking_env("sqlite:////tmp/m.db") == {
        "MLFLOW_TRACKING_URI": "sqlite:////tmp/m.db"
    }


def test_ingest_owns_its_split_directories(local_ray, tmp_path):
    import pyarrow.parquet as pq

    from fcn.config import IngestConfig
    from fcn.data import ingest, synthetic

    root, out = tmp_path / "voc", tmp_path / "out"
    synthetic.generate(root, num_images=4, seed=0, min_size=40, max_size=48)
    config = IngestConfig(output=str(out), voc=str(root))
    first = ingest.run(ingest.check_config(config))
    splits = sorted(first.splits)
    foreign = [f"{splits[0]}/old-export.parquet", f"{splits[0]}/.part-00000.parquet.x.tmp"]
    for key in foreign:
        (out / key).write_bytes(b"not parquet")
    (out / "README.txt").write_text("the operator's own file")  # not in a split: left alone
    again = ingest.run(ingest.check_config(config))
    assert again.stale_shards_removed == len(foreign)
    assert not any((out / key).exists() for key in foreign)
    assert (out / "README.txt").exists()
    for split in splits:  # a split declared done reads
        assert pq.read_table(out / split).num_rows == first.splits[split].written


def test_a_run_left_running_by_a_dead_job_is_marked_killed_then_continued(
    tmp_path, capsys, monkeypatch
):
    from fcn.config import TrainConfig
    from fcn.training.driver import _tracked_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = str(tmp_path / "runs" / "r")
    config = TrainConfig(data=str(tmp_path / "data"), name="r", experiment="trust")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    first = _tracked_run(config, run_dir, {"a": 1})  # kept: its run must not end
    run_id, _ = first.__enter__()  # the job then dies as a whole
    assert tracking.client(uri).get_run(run_id).info.end_time is None
    second = _tracked_run(config, run_dir, {"a": 1})
    again, _ = second.__enter__()
    assert again == run_id
    info = tracking.client(uri).get_run(run_id).info
    assert info.status == "RUNNING" and info.end_time is not None  # the kill, on record
    assert "marked KILLED" in capsys.readouterr().out


def test_a_placement_resource_is_one_unit_per_worker_and_off_by_default():
    from fcn.config import EvaluateConfig, SegmentConfig, TrainConfig, parse
    from fcn.runtime import placement_resources, worker_resources

    assert worker_resources(2.0, False) == {"CPU": 2.0}
    assert worker_resources(1.0, True, "gpu_node") == {"CPU": 1.0, "GPU": 1, "gpu_node": 1}
    assert placement_resources(None) == placement_resources("") == {}
    assert TrainConfig(data="d").placement_resource is None
    assert SegmentConfig(input="i", output="o", model="m").placement_resource is None
    assert EvaluateConfig(data="d", model="m").placement_resource is None
    for cls, args in (
        (TrainConfig, ["--data", "d"]),
        (EvaluateConfig, ["--data", "d", "--model", "m"]),
        (SegmentConfig, ["--input", "i", "--output", "o", "--model", "m"]),
    ):
        parsed = parse(cls, [*args, "--placement-resource", "near_data"])
        assert parsed.placement_resource == "near_data", cls


def test_an_unreadable_image_is_an_error_tonight_and_tried_again_tomorrow(tmp_path):
    """An outage passes, a bad image does not: a read that failed records no etag (the bytes
    were never seen), so the next night plans the image again; a decode error keeps its etag
    and waits for new bytes (or --retry-errors)."""
    from fcn.nightly import stages

    config, src, out = locations(tmp_path)
    src.child("bad.png").write_bytes(b"not an image")
    files = listing([src.child("gone.png").path, src.child("bad.png").path])
    tonight = plan.plan(files, schema.STATE.empty_table(), NO_MASKS, src, out, config, "m")
    assert tonight.todo.num_rows == 2  # gone.png is listed, then deleted before its read
    decoded = {r["uri"]: r for r in stages.read_decode(tonight.todo, src, config).to_pylist()}
    gone, bad = decoded[src.child("gone.png").uri], decoded[src.child("bad.png").uri]
    assert "read failed" in gone["error"] and gone["etag"] is None
    assert bad["status"] == "error" and bad["etag"] is not None  # a decode error: its version
    done = pa.Table.from_pylist(list(decoded.values()), schema.STATE)
    tomorrow = plan.plan(files, done, NO_MASKS, src, out, config, "m")
    assert tomorrow.todo.column("uri").to_pylist() == [gone["uri"]]
