"""MLflow through fcn.tracking on a local sqlite store: run lifecycle, batched metrics, dataset
digests, the registry with its pyfunc model, and the champion alias."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fcn import tracking
from fcn.engine import checkpoint, images, inference
from fcn.engine.models import build_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module (creating a sqlite store's tables takes seconds); tests keep
    apart by their own run ids and registered model names."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)  # artifacts of a local store land under here
        yield uri


def _status(run_id):
    return tracking.client().get_run(run_id).info.status


def _history(run_id, key):
    return tracking.metric_history(run_id, key)


def tiny_checkpoint(path, seed=0, num_classes=3) -> str:
    """A real, small FCN-32s (1/16 width) whose argmax varies over an image."""
    torch.manual_seed(seed)
    model = build_model("fcn32s", num_classes=num_classes, width=0.0625)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    config = {"model": "fcn32s", "num_classes": num_classes, "width": 0.0625,
              "preprocessing": "torchvision"}  # fmt: skip
    checkpoint.save(model.state_dict(), config, str(path))
    return str(path)


def test_importing_tracking_imports_neither_torch_nor_mlflow():
    code = "import sys, fcn.tracking; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_outside_a_checkout_the_commit_comes_from_the_environment():
    """What a `ray job submit` job meets: no .git (Ray leaves it out), FCN_GIT_COMMIT set."""
    code = "from fcn import tracking; print(tracking.source_tags())"
    env = {**os.environ, "GIT_DIR": "/nonexistent", tracking.GIT_COMMIT_ENV: "abc123"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "'mlflow.source.git.commit': 'abc123'" in done.stdout
    env.pop(tracking.GIT_COMMIT_ENV)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert "git.commit" not in done.stdout and "'mlflow.source.name': 'python'" in done.stdout


def test_tracking_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The environment, not mlflow.set_tracking_uri: that one also writes the variable, which
    # would then outlive this test and point every later one at this store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/rel.db"


def test_run_lifecycle_failed_then_resumed(store):
    run_id = tracking.start_run("exp", "job-a")
    assert _status(run_id) == "RUNNING"
    tags = tracking.client().get_run(run_id).data.tags
    # Source tags: the entry point (here pytest's) and this checkout's commit.
    assert tags[tracking.TAG_GIT_COMMIT] == tracking.git_commit()
    assert re.fullmatch(r"[0-9a-f]{40}", tags[tracking.TAG_GIT_COMMIT])
    assert tags[tracking.TAG_SOURCE_NAME] and tags[tracking.TAG_SOURCE_TYPE] == "JOB"
    try:
        raise FileNotFoundError("no split at s3://KEY:SECRET@bucket/data/val")
    except FileNotFoundError:
        tracking.end_run(run_id, "FAILED")  # the exception being handled is the reason
    run = tracking.client().get_run(run_id)
    assert run.info.status == "FAILED"
    reason = "FileNotFoundError: no split at s3://bucket/data/val"
    assert run.data.tags[tracking.TAG_FAILURE] == reason
    assert tracking.start_run("exp", "job-a", run_id=run_id) == run_id
    assert _status(run_id) == "RUNNING"
    assert tracking.TAG_FAILURE not in tracking.client().get_run(run_id).data.tags
    tracking.log_metrics(run_id, {"train_loss": 1.5}, step=3)
    tracking.end_run(run_id)
    assert _history(run_id, "train_loss") == [(3, 1.5)]
    assert _status(run_id) == "FINISHED"


def test_failure_reason_is_one_line_naming_the_error():
    from ray.train import WorkerGroupError

    assert tracking.failure_reason(KeyError("mask")) == "KeyError: 'mask'"
    bad = ValueError("--data s3://AKIA:SECRET@bucket/x has no val/")
    assert tracking.failure_reason(bad) == "ValueError: --data s3://bucket/x has no val/"
    # What a Ray Train job raises: the lowest rank's error, the last line of its traceback.
    worker = RuntimeError("Traceback (most recent call last):\n  File ...\nKeyError: 'mask'")
    wrapped = WorkerGroupError("[Rank 1 Error Snippet] ...", {1: worker, 0: worker})
    assert tracking.failure_reason(wrapped) == "rank 0: KeyError: 'mask'"
    assert len(tracking.failure_reason(ValueError("x" * 5000))) == 500
    assert tracking.failure_reason(MemoryError()) == "MemoryError"


def test_params_redact_credentials_and_survive_resume(store):
    run_id = tracking.start_run("exp", "job-b")
    settings = {"data": "s3://AKIA:SECRET@bucket/data", "iterations": 10, "val_limit": None}
    tracking.log_params(run_id, settings)  # unset (None) settings are no params
    params = tracking.client().get_run(run_id).data.params
    assert params == {"data": "s3://bucket/data", "iterations": "10"}
    tracking.log_params(run_id, {"iterations": 20, "workers": 2})  # resumed with a change
    run = tracking.client().get_run(run_id)
    assert run.data.params["iterations"] == "10" and run.data.params["workers"] == "2"
    assert run.data.tags["resumed.iterations"] == "20"


def test_run_logger_buffers_steps_and_sends_them_in_one_batch(store):
    run_id = tracking.start_run("exp", "train")
    logger = tracking.RunLogger(run_id, store, every_steps=3, every_s=3600)
    logger.log({"train_loss": 1.0}, 1)
    logger.log({"train_loss": 0.9}, 2)
    logger.log({"mean_iu": 0.2, "best_mean_iu": 0.2}, 2)  # an evaluation at the same step
    assert _history(run_id, "train_loss") == []  # still buffered: no request per step
    logger.log({"train_loss": 0.8}, 3)  # the third step sends the buffer
    assert _history(run_id, "train_loss") == [(1, 1.0), (2, 0.9), (3, 0.8)]
    assert _history(run_id, "mean_iu") == [(2, 0.2)]
    logger.log({"train_loss": 0.7}, 4)
    logger.flush()
    assert _history(run_id, "train_loss")[-1] == (4, 0.7)


def test_panels_are_mlflow_image_series_with_a_step(store, tmp_path):
    """MLflow's UI shows a step slider for images logged with a key and a step: it finds them
    by this file layout under `images/` (and the run tag below)."""
    run_id = tracking.start_run("exp", "panels")
    logger = tracking.RunLogger(run_id, store)
    panel = np.zeros((4, 12, 3), np.uint8)
    panel[:, 4:8] = (10, 200, 30)
    for step in (50, 100):
        logger.log_image(panel, "val/2007_000032#1", step)  # '#': MLflow refuses it in a key
    paths = sorted(a.path for a in tracking.client().list_artifacts(run_id, "images"))
    pattern = r"images/val~2007_000032_1\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]{36}"
    found = [re.fullmatch(pattern + r"(\.png|\+compressed\.webp)", p) for p in paths]
    assert all(found) and len(found) == 4, paths
    assert sorted(int(m[1]) for m in found) == [50, 50, 100, 100]
    assert tracking.client().get_run(run_id).data.tags["mlflow.loggedImages"] == "True"
    png = next(p for p in paths if p.endswith(".png"))
    local = tracking.client().download_artifacts(run_id, png, str(tmp_path))
    np.testing.assert_array_equal(images.decode_image(Path(local).read_bytes()), panel)


def test_log_run_records_a_finished_run_in_one_call(store):
    run_id = tracking.log_run(
        "segment-exp", "segment-abc",
        params={"output": "s3://K:S@b/masks", "batch": 4, "max_images": None},
        tags={"manifest": "s3://b/m.parquet"}, metrics={"done": 7, "failed": 0},
        artifacts={"summary/summary.json": b'{"done": 7}'},
    )  # fmt: skip
    run = tracking.client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "segment-abc"
    assert run.data.params == {"output": "s3://b/masks", "batch": "4"}
    assert run.data.tags["manifest"] == "s3://b/m.parquet"
    assert run.data.tags[tracking.TAG_GIT_COMMIT] == tracking.git_commit()
    assert run.data.metrics == {"done": 7.0, "failed": 0.0}
    assert [a.path for a in tracking.client().list_artifacts(run_id, "summary")] == [
        "summary/summary.json"
    ]


def _split(root: Path, values) -> str:
    (root / "val").mkdir(parents=True)
    for i, chunk in enumerate(values):
        pq.write_table(pa.table({"image_id": chunk}), root / "val" / f"part-{i}.parquet")
    return str(root / "val")


def test_dataset_digest_follows_content_not_location(tmp_path):
    a = _split(tmp_path / "a", [["x", "y"], ["z"]])
    b = _split(tmp_path / "b", [["x", "y"], ["z"]])  # the same data elsewhere
    changed = _split(tmp_path / "c", [["x", "y"], ["w"]])
    assert tracking.dataset_digest(a) == tracking.dataset_digest(b)
    assert tracking.dataset_digest(a) != tracking.dataset_digest(changed)
    assert tracking.dataset_digest(a, limit=2) != tracking.dataset_digest(a)  # a subset
    with pytest.raises(FileNotFoundError, match="no Parquet"):
        tracking.dataset_digest(str(tmp_path / "missing"))


def test_split_inputs_are_logged_with_digests_and_contexts(store, tmp_path):
    train = _split(tmp_path / "tr", [["a", "b"]])
    val = _split(tmp_path / "va", [["c"]])
    run_id = tracking.start_run("exp", "train")
    digests = tracking.log_split_inputs(run_id, {"train": train, "val": val}, {"val": 1})
    run = tracking.client().get_run(run_id)
    logged = {
        next(t.value for t in i.tags if t.key == tracking.DATASET_CONTEXT): i.dataset
        for i in run.inputs.dataset_inputs
    }
    assert {k: d.digest for k, d in logged.items()} == digests
    assert digests["val"] == tracking.dataset_digest(val, limit=1)
    assert json.loads(logged["train"].source)["uri"] == train
    assert run.data.tags[tracking.TAG_VAL_DIGEST] == digests["val"]


def _register(tmp_path, name, score, val_digest=None, model="m"):
    run_id = tracking.start_run("exp", name)
    if val_digest:
        tracking.client().set_tag(run_id, tracking.TAG_VAL_DIGEST, val_digest)
    path = tiny_checkpoint(tmp_path / name)
    registered = tracking.register_checkpoint(run_id, path, model, score)
    tracking.end_run(run_id)
    return run_id, registered


def test_champion_moves_only_when_better_on_the_same_val_data(store, tmp_path):
    versions = [
        _register(tmp_path, name, score, digest)[1]
        for name, score, digest in (
            ("a", 0.5, "d1"), ("b", 0.3, "d1"), ("c", 0.7, "d1"),
            ("other-val", 0.9, "d2"),  # higher, but measured on other data: no champion
        )
    ]  # fmt: skip
    assert versions == [("1", True), ("2", False), ("3", True), ("4", False)]
    assert tracking.champion_mean_iu("m") == ("3", 0.7)
    assert tracking.pin_model_uri("models:/m@champion") == "models:/m/3"
    tags = tracking.client().get_model_version("m", "3").tags
    assert tags["val_digest"] == "d1" and tags["model"] == "fcn32s" and tags["width"] == "0.0625"
    assert tags["num_classes"] == "3" and tags["mean_iu"] == "0.700000"
    assert tags["git_commit"] == tracking.git_commit() and tags["classes"] == "0,1,2"
    champion = tracking.champion_version("m")
    other = tracking.client().get_model_version("m", "4")
    assert "d2" in tracking.incomparable(other, champion)
    assert tracking.incomparable(tracking.client().get_model_version("m", "1"), champion) is None


def test_registered_version_is_a_pyfunc_model_and_a_checkpoint(store, tmp_path):
    import mlflow

    run_id, (version, champion) = _register(tmp_path, "a", 0.5, model="served")
    # The same run registering again (a resumed, finished job) adds no version.
    again = tracking.register_checkpoint(run_id, tiny_checkpoint(tmp_path / "a2"), "served", 0.5)
    assert (version, champion) == again == ("1", True)
    local = tracking.resolve_checkpoint("models:/served@champion", str(tmp_path / "dl"))
    state, config = checkpoint.load(local)
    direct, _ = checkpoint.load(str(tmp_path / "a"))
    assert all(torch.equal(state[k], direct[k]) for k in direct) and config.width == 0.0625

    pyfunc = mlflow.pyfunc.load_model("models:/served@champion")
    assert pyfunc.metadata.signature.inputs.input_names() == ["image"]
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    png = images.encode_mask(picture[..., 0], np.zeros((256, 3), np.uint8))  # any PNG
    data = [png, _jpeg(picture)]
    out = pyfunc.predict(__import__("pandas").DataFrame({"image": data}))
    loaded = inference.load_model(str(tmp_path / "a"))
    for i, encoded in enumerate(data):
        image = images.decode_image(encoded)
        expected = inference.predict(loaded.model, image[None], loaded.preprocessing)[0]
        assert out["mask"][i].shape == image.shape[:2] == (37, 53)
        np.testing.assert_array_equal(out["mask"][i], expected)
        np.testing.assert_array_equal(images.decode_mask(out["png"][i]), expected)
    assert len(np.unique(out["mask"][1])) > 1  # a varied map, not all one class


def test_an_evaluation_run_names_and_links_the_version_it_scored(store, tmp_path):
    _register(tmp_path, "scored", 0.5, model="evaluated")
    pinned = tracking.pin_model_uri("models:/evaluated@champion")
    tags = tracking.model_tags(pinned)
    assert tags == {"model_uri": "models:/evaluated/1", "model_name": "evaluated",
                    "model_version": "1"}  # fmt: skip
    run_id = tracking.start_run("eval", "evaluate-val", tags=tags)
    tracking.link_model_input(run_id, pinned)
    run = tracking.client().get_run(run_id)
    source = tracking.client().get_model_version("evaluated", "1").source  # models:/<model id>
    assert [f"models:/{m.model_id}" for m in run.inputs.model_inputs] == [source]
    assert tracking.model_tags("/ckpt/best") == {"model_uri": "/ckpt/best"}
    tracking.link_model_input(run_id, "/ckpt/best")  # a checkpoint directory: tags only


def test_ui_links_of_a_local_store_say_how_to_serve_the_ui(store):
    """(Links to a tracking server's pages: tests/integration/test_serving.py.)"""
    (line,) = tracking.ui_links(store, tracking.start_run("links", "a"), "m", "1")
    assert line.startswith(f"MLflow UI: mlflow ui --backend-store-uri {store}")


def test_the_system_metrics_flag_starts_a_monitor_of_the_run(store, tmp_path, monkeypatch):
    """`--system-metrics` reaches the training worker's start: there (Ray Train's local mode,
    in this process) local rank 0 starts MLflow's monitor of its node on the run, and without
    the flag none. The sampled values are MLflow's business, not checked."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    from fcn.config import TrainConfig, parse
    from fcn.engine.classes import default_classes
    from fcn.training.context import RunContext
    from fcn.training.loop import _start_worker

    assert parse(TrainConfig, ["--data", "d"]).system_metrics is False
    assert parse(TrainConfig, ["--data", "d", "--system-metrics"]).system_metrics is True
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    run_id = tracking.start_run("exp", "system")
    run = RunContext(run_id, store, str(tmp_path), {}, default_classes(3), None)
    workers = {}

    def loop(_):
        for flag in (False, True):
            workers[flag] = _start_worker(TrainConfig(data="d", system_metrics=flag), run)

    threads = torch.get_num_threads()  # _start_worker sets this process's torch threads
    try:
        TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=0)).fit()
    finally:
        torch.set_num_threads(threads)
    assert workers[False].system is None and workers[True].system is not None
    deadline = time.monotonic() + 120
    while "system/cpu_utilization_percentage" not in _metrics_of(run_id):
        assert time.monotonic() < deadline, _metrics_of(run_id)
        time.sleep(0.2)
    workers[True].system.finish()


def _metrics_of(run_id) -> dict:
    return tracking.client().get_run(run_id).data.metrics


def _jpeg(picture) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_a_version_registered_as_a_bare_directory_still_resolves(store, tmp_path):
    """The layout before pyfunc models: the checkpoint directory as the version's source."""
    path = tiny_checkpoint(tmp_path / "old")
    run_id = tracking.start_run("exp", "old")
    mlflow_client = tracking.client()
    mlflow_client.log_artifacts(run_id, path, "checkpoint")
    mlflow_client.create_registered_model("old")
    mlflow_client.create_model_version("old", source=f"runs:/{run_id}/checkpoint", run_id=run_id)
    local = tracking.resolve_checkpoint("models:/old/1", str(tmp_path / "dl"))
    assert checkpoint.load(local)[1].model == "fcn32s"
    assert tracking.pin_model_uri("models:/m/1") == "models:/m/1"


def test_run_classes_reads_the_logged_class_list(store):
    run_id = tracking.start_run("exp", "classes")
    assert tracking.run_classes(run_id) is None
    listed = {"num_classes": 2, "names": ["sky", "road"], "colors": [[1, 2, 3], [4, 5, 6]]}
    tracking.log_classes(run_id, listed)
    assert tracking.run_classes(run_id) == listed


def _import_job():
    """jobs/import_model.py as a module: its main() runs here, against the test store."""
    spec = importlib.util.spec_from_file_location("import_model", REPO / "jobs/import_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_imported_weights_are_a_pyfunc_champion_that_training_can_replace(store, tmp_path,
                                                                           capsys):  # fmt: skip
    """Defect: `import_model --champion` registered a bare checkpoint directory (not a pyfunc
    model: `mlflow models serve` failed) without a val digest, so no trained version could
    ever replace it."""
    import mlflow

    weights = tmp_path / "fcn32s_from_caffe.pth"  # a pytorch-fcn file: our keys, a state_dict
    net = tiny_checkpoint(tmp_path / "net")
    torch.save(checkpoint.load(net)[0], weights)
    job = _import_job()
    args = ["--from", str(weights), "--registered-model", "imported", "--champion"]
    assert job.main([*args, "--output", str(tmp_path / "imported")]) == 0
    assert "registered: models:/imported/1, alias champion" in capsys.readouterr().out
    served = mlflow.pyfunc.load_model("models:/imported@champion")
    picture = np.random.default_rng(1).integers(0, 256, (29, 41, 3), dtype=np.uint8)
    out = served.predict(pd.DataFrame({"image": [_jpeg(picture)]}))
    loaded = inference.load_model(str(tmp_path / "imported"))
    image = images.decode_image(_jpeg(picture))
    expected = inference.predict(loaded.model, image[None], loaded.preprocessing)[0]
    np.testing.assert_array_equal(out["mask"][0], expected)
    tags = tracking.client().get_model_version("imported", "1").tags
    assert tags["fcn.source"] == str(weights) and tags["fcn.source_format"] == "pytorch-fcn"
    assert tags["model"] == "fcn32s" and tags["num_classes"] == "3"
    assert tracking.TAG_VAL_DIGEST not in tags

    # A trained version (validated on recorded data) replaces the unmeasured champion...
    assert _register(tmp_path, "trained", 0.1, "d1", model="imported")[1] == ("2", True)
    # ...and an imported one never replaces a measured champion: registered, alias unmoved.
    assert job.main([*args, "--output", str(tmp_path / "again")]) == 2
    assert "error: champion unchanged: version 3 has no recorded validation data" in (
        capsys.readouterr().err
    )
    assert str(tracking.champion_version("imported").version) == "2"


def test_the_champion_rule_for_versions_without_a_val_digest():
    from types import SimpleNamespace

    def version(number, digest=None, mean_iu=None):
        tags = {"val_digest": digest, "mean_iu": mean_iu}
        return SimpleNamespace(version=number, tags={k: v for k, v in tags.items() if v})

    imported, old, measured = version("1"), version("2", mean_iu="0.6"), version("3", "d1", "0.1")
    assert tracking.incomparable(imported, None) is None  # no champion: anything may be one
    assert tracking.incomparable(measured, imported) is None  # a digest beats none
    assert tracking.incomparable(measured, old) is None
    assert "no recorded validation data" in tracking.incomparable(imported, measured)
    assert tracking.incomparable(imported, old) is None  # both unmeasured: comparable
    assert "not comparable" in tracking.incomparable(version("4", "d2"), measured)


def test_checked_model_pins_the_alias_and_checks_the_checkpoint_once(store, tmp_path):
    _register(tmp_path, "checked", 0.5, model="checked")
    pinned, config = tracking.checked_model("models:/checked@champion")
    assert pinned == "models:/checked/1" and config.model == "fcn32s"
    local = str(tmp_path / "checked")
    assert tracking.checked_model(local) == (local, checkpoint.check(local))
    with pytest.raises(FileNotFoundError, match="models:/checked@nope does not resolve") as err:
        tracking.checked_model("models:/checked@nope")
    assert "\n" not in str(err.value)
