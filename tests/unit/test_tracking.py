"""MLflow through fcn.tracking on a local sqlite store: run lifecycle, batched metrics, dataset
digests, the registry with its pyfunc model, and the champion alias."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from fcn import checkpoint, images, inference, tracking
from fcn.models import build_model

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
              "preprocessing": model.preprocessing}  # fmt: skip
    checkpoint.save(model.state_dict(), config, str(path))
    return str(path)


def test_importing_tracking_imports_neither_torch_nor_mlflow():
    code = "import sys, fcn.tracking; print(sorted({'torch', 'mlflow'} & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_tracking_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The environment, not mlflow.set_tracking_uri: that one also writes the variable, which
    # would then outlive this test and point every later one at this store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/rel.db"


def test_run_lifecycle_failed_then_resumed(store):
    run_id = tracking.start_run("exp", "job-a")
    assert _status(run_id) == "RUNNING"
    tracking.end_run(run_id, "FAILED")
    assert _status(run_id) == "FAILED"
    assert tracking.start_run("exp", "job-a", run_id=run_id) == run_id
    assert _status(run_id) == "RUNNING"
    tracking.log_metrics(run_id, {"train_loss": 1.5}, step=3)
    tracking.end_run(run_id)
    assert _history(run_id, "train_loss") == [(3, 1.5)]
    assert _status(run_id) == "FINISHED"


def test_params_redact_credentials_and_survive_resume(store):
    run_id = tracking.start_run("exp", "job-b")
    tracking.log_params(run_id, {"data": "s3://AKIA:SECRET@bucket/data", "iterations": 10})
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
    logger.log_image(b"\x89PNG fake", "val_images/a_iter000004.png")
    logged = tracking.client().list_artifacts(run_id, "val_images")
    assert [a.path for a in logged] == ["val_images/a_iter000004.png"]


def test_log_run_records_a_finished_run_in_one_call(store):
    run_id = tracking.log_run(
        "segment-exp", "segment-abc", params={"output": "s3://K:S@b/masks", "batch": 4},
        tags={"manifest": "s3://b/m.parquet"}, metrics={"done": 7, "failed": 0},
        artifacts={"summary/summary.json": b'{"done": 7}'},
    )  # fmt: skip
    run = tracking.client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "segment-abc"
    assert run.data.params == {"output": "s3://b/masks", "batch": "4"}
    assert run.data.tags["manifest"] == "s3://b/m.parquet"
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
    assert all(torch.equal(state[k], direct[k]) for k in direct) and config["width"] == 0.0625

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
    assert checkpoint.load(local)[1]["model"] == "fcn32s"
    assert tracking.pin_model_uri("models:/m/1") == "models:/m/1"


def test_run_classes_reads_the_logged_class_list(store):
    run_id = tracking.start_run("exp", "classes")
    assert tracking.run_classes(run_id) is None
    listed = {"num_classes": 2, "names": ["sky", "road"], "colors": [[1, 2, 3], [4, 5, 6]]}
    tracking.log_classes(run_id, listed)
    assert tracking.run_classes(run_id) == listed
