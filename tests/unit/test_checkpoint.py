"""The checkpoint contract (ARCHITECTURE.md): every broken field fails `checkpoint.check` with
one line naming it, a model.pt that is not a plain state_dict fails `checkpoint.load` with one
line, and checkpoints from elsewhere may declare their preprocessing by name."""

from __future__ import annotations

import json

import pytest
import torch

from fcn.engine import checkpoint
from fcn.engine.classes import ClassList
from fcn.engine.models import build_model, preprocess

GOOD = {"model": "fcn32s", "num_classes": 3, "preprocessing": "caffe"}


def write(tmp_path, config: dict, weights=None) -> str:
    """A checkpoint directory with `config` as written (no validation on the way in)."""
    directory = tmp_path / "ckpt"
    directory.mkdir(exist_ok=True)
    (directory / checkpoint.CONFIG_FILE).write_text(json.dumps(config))
    torch.save({"w": torch.ones(2)} if weights is None else weights, directory / "model.pt")
    return str(directory)


def one_line_error(call, *args) -> str:
    with pytest.raises(checkpoint.ContractError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("field", ["model", "num_classes", "preprocessing"])
def test_each_missing_field_is_named(tmp_path, field):
    config = {k: v for k, v in GOOD.items() if k != field}
    message = one_line_error(checkpoint.check, write(tmp_path, config))
    assert f"lacks '{field}'" in message and str(tmp_path) in message


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"model": "fcn4s"}, "'model'"),
        ({"num_classes": 0}, "'num_classes'"),
        ({"num_classes": 256}, "'num_classes'"),
        ({"num_classes": "21"}, "'num_classes'"),
        ({"num_classes": True}, "'num_classes'"),
        ({"width": 0}, "'width'"),
        ({"width": "wide"}, "'width'"),
        ({"preprocessing": "imagenet"}, "'preprocessing'"),
        ({"preprocessing": {"channel_order": "RGB"}}, "'preprocessing'"),
        ({"preprocessing": {**preprocess.CAFFE, "channel_order": "HSV"}}, "'preprocessing'"),
        ({"preprocessing": {**preprocess.CAFFE, "mean": 104.0}}, "'preprocessing'"),
        ({"classes": ClassList.from_names(["a", "b"]).to_dict()}, "'classes'"),
        ({"classes": ["a", "b", "c"]}, "'classes'"),
        ({"classes": {"colors": [[0, 0, 0]] * 3}}, "'classes'"),
        ({"classes": {"names": ["a", "b", "c"], "colors": [[0, 0, 300]] * 3}}, "'classes'"),
        ({"class_names": ["a", "b"]}, "'classes'"),
    ],
)
def test_each_invalid_field_is_named(tmp_path, change, named):
    message = one_line_error(checkpoint.check, write(tmp_path, {**GOOD, **change}))
    assert named in message


def test_missing_weights_file_is_named(tmp_path):
    uri = write(tmp_path, GOOD)
    (tmp_path / "ckpt" / "model.pt").unlink()
    assert "model.pt is missing" in one_line_error(checkpoint.check, uri)


def test_no_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint: no config.json"):
        checkpoint.check(str(tmp_path))


@pytest.mark.parametrize("name", ["caffe", "torchvision"])
def test_preprocessing_declared_by_name_resolves_to_the_spec(tmp_path, name):
    config = checkpoint.check(write(tmp_path, {**GOOD, "preprocessing": name}))
    assert config.preprocessing == preprocess.SPECS[name]
    assert config.model == "fcn32s" and config.num_classes == 3


def test_a_full_spec_dict_and_a_class_list_pass(tmp_path):
    classes = ClassList.from_names(["sky", "road", "car"], [(0, 0, 255), (90, 90, 90), None])
    config = {**GOOD, "preprocessing": preprocess.TORCHVISION, "classes": classes.to_dict()}
    assert checkpoint.check(write(tmp_path, config)).preprocessing == preprocess.TORCHVISION


def test_garbage_weights_fail_with_one_line(tmp_path):
    uri = write(tmp_path, GOOD)
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"<html>403 Forbidden</html>")
    message = one_line_error(checkpoint.load, uri)
    assert "model.pt is not a loadable plain state_dict" in message
    assert "weights_only" not in message  # not torch's advice to unpickle anyway


def test_pickled_module_fails_with_one_line_and_is_never_unpickled(tmp_path):
    module = build_model("fcn-alexnet", num_classes=3)
    message = one_line_error(checkpoint.load, write(tmp_path, GOOD, weights=module))
    assert "model.pt is not a loadable plain state_dict" in message


def test_weights_that_are_not_a_name_to_tensor_dict_fail(tmp_path):
    message = one_line_error(checkpoint.load, write(tmp_path, GOOD, weights=[torch.ones(2)]))
    assert "holds a list, not a state_dict" in message


def test_save_then_load_round_trip(tmp_path):
    state = {"conv.weight": torch.arange(6.0).reshape(2, 3)}
    uri = str(tmp_path / "saved")
    checkpoint.save(state, {**GOOD, "lr": 1e-4}, uri)
    loaded, config = checkpoint.load(uri)
    assert torch.equal(loaded["conv.weight"], state["conv.weight"])
    assert config.extra["lr"] == 1e-4 and config.preprocessing == preprocess.CAFFE


def test_the_typed_config_reads_old_checkpoints_and_writes_back_what_it_read(tmp_path):
    """A checkpoint written before class lists travelled (`class_names`, no width) still loads,
    and to_dict keeps every key the typed fields do not cover (the training settings)."""
    old = {**GOOD, "class_names": ["sky", "road", "car"], "train": {"lr": 1e-10}, "iteration": 7}
    config = checkpoint.check(write(tmp_path, old))
    assert config.classes.names == ("sky", "road", "car") and config.width is None
    assert config.build_model().fc7.out_channels == 4096  # width absent: the paper's net
    written = config.to_dict()
    assert written["train"] == {"lr": 1e-10} and written["iteration"] == 7
    assert "width" not in written and written["classes"]["names"] == ["sky", "road", "car"]
    assert checkpoint.CheckpointConfig.from_dict(written) == config
