"""fcn.engine.inference: a checkpoint loaded once, uint8 images in, class maps out; no Ray, no
MLflow on import; a URI that does not resolve or weights that do not fit fail with one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_data import varied_model

from fcn.engine import checkpoint
from fcn.engine.classes import default_classes
from fcn.engine.inference import load_model, predict
from fcn.engine.models.preprocess import normalize
from fcn.tracking import checked_model

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = varied_model(NUM_CLASSES)
    uri = str(tmp_path_factory.mktemp("inference") / "checkpoint")
    config = {"model": "fcn-alexnet", "num_classes": NUM_CLASSES, "preprocessing": "torchvision"}
    checkpoint.save(model.state_dict(), config, uri)
    return uri


def test_importing_inference_and_evaluate_imports_neither_ray_nor_mlflow():
    code = (
        "import sys, fcn.engine.inference, fcn.evaluation.score, fcn.engine.checkpoint; "
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_predict_is_the_argmax_of_the_models_logits(model_dir):
    loaded = load_model(model_dir)
    assert loaded.num_classes == NUM_CLASSES and loaded.preprocessing["name"] == "torchvision"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 37, 45, 3), dtype=np.uint8)
    masks = predict(loaded.model, images, loaded.preprocessing)
    with torch.no_grad():
        expected = loaded.model(normalize(images, loaded.preprocessing)).argmax(1).numpy()
    assert masks.dtype == np.uint8 and masks.shape == (2, 37, 45)
    assert len(np.unique(masks)) > 1  # a model painting one class would prove nothing
    assert np.array_equal(masks, expected)


def test_checked_model_reads_the_config_without_building_the_model(model_dir):
    pinned, config = checked_model(model_dir)
    assert pinned == model_dir
    assert config.num_classes == NUM_CLASSES and config.preprocessing["scale"] == 1


def test_weights_that_do_not_fit_the_config_fail_with_one_line(model_dir, tmp_path):
    state, config = checkpoint.load(model_dir)
    other = str(tmp_path / "other")
    wider = default_classes(NUM_CLASSES + 1)
    checkpoint.save(state, config.replace(num_classes=NUM_CLASSES + 1, classes=wider), other)
    with pytest.raises(checkpoint.ContractError) as caught:
        load_model(other)
    message = str(caught.value)
    assert "\n" not in message and "does not fit its config.json" in message
    assert f"num_classes {NUM_CLASSES + 1}" in message and "size mismatch" in message


def test_the_engine_leaves_mlflow_uris_to_the_tracking_layer():
    with pytest.raises(ValueError, match="fcn.tracking.load_model"):
        load_model("models:/fcn@champion")


def test_an_unknown_registered_model_alias_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(FileNotFoundError) as caught:
        checked_model("models:/no-such-model@champion")
    message = str(caught.value)
    assert "\n" not in message and "models:/no-such-model@champion does not resolve" in message
