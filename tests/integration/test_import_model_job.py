"""Issue 17 acceptance on real services: a pytorch-fcn-format .pth on the S3 test server imports
and registers on the MLflow test server as a pyfunc model version (as trained versions are),
and the nightly segment job (`ray job submit`) runs with `models:/NAME/1`, painting what the
file's net predicts with the imported class list, as the pyfunc model does."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcn import storage
from fcn.engine import checkpoint
from fcn.engine.models import build_model, preprocess
from fcn.engine.models.preprocess import normalize

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "fcn-imported"
CLASSES = "background 0 0 0\nroad 128 64 128\ncar #00ff00\n"
COLORS = [(0, 0, 0), (128, 64, 128), (0, 255, 0)]


def pytorch_fcn_net() -> torch.nn.Module:
    """An FCN-16s at width 1/8 whose argmax varies over the image (a fresh net's zero score
    layers would paint everything class 0 and prove nothing). pytorch-fcn's key names are our
    state_dict's (the Caffe layer names), so its state_dict is a pytorch-fcn file."""
    torch.manual_seed(0)
    net = build_model("fcn16s", num_classes=len(COLORS), width=0.125)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net.eval()


def import_model(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "jobs/import_model.py", *args],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_pytorch_fcn_file_imports_registers_and_segments(s3, mlflow_server, ray_head, tmp_path):
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    net = pytorch_fcn_net()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    s3.client().put_object(
        Bucket=s3.bucket, Key="published/fcn16s_from_caffe.pth", Body=buffer.getvalue()
    )
    (tmp_path / "classes.txt").write_text(CLASSES)
    env = {**s3.env, **mlflow_server.env}
    output = s3.uri("imported/fcn16s")
    args = ["--from", s3.uri("published/fcn16s_from_caffe.pth"), "--output", output]
    args += ["--classes", str(tmp_path / "classes.txt"), "--registered-model", MODEL_NAME]

    done = import_model(args, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"registered: models:/{MODEL_NAME}/1" in done.stdout
    state, config = checkpoint.load(output)
    assert config.model == "fcn16s" and config.num_classes == 3 and config.width == 0.125
    assert config.preprocessing == preprocess.CAFFE
    assert config.classes.names == ("background", "road", "car")
    assert config.extra["weights_source"] == s3.uri("published/fcn16s_from_caffe.pth")
    for key, tensor in net.state_dict().items():
        assert torch.equal(state[key], tensor), key

    client = MlflowClient(mlflow_server.uri)
    tags = client.get_model_version(MODEL_NAME, "1").tags
    assert tags["fcn.source"] == config.extra["weights_source"]
    assert tags["fcn.source_format"] == "pytorch-fcn"
    assert tags["fcn.source_sha256"] == config.extra["weights_sha256"]
    assert tags["model"] == "fcn16s" and tags["classes"] == "background,road,car"
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")  # not a bare directory
    with pytest.raises(MlflowException):  # no champion move unless asked
        client.get_model_version_by_alias(MODEL_NAME, "champion")
    again = import_model(args, env)  # the same --output: refused before any work
    assert again.returncode == 2 and "holds a checkpoint already" in again.stderr

    rng = np.random.default_rng(0)
    pictures = {
        f"tiny_{i}.png": rng.integers(0, 256, (24 + 8 * i, 32, 3), np.uint8) for i in range(3)
    }
    for key, image in pictures.items():
        s3.client().put_object(Bucket=s3.bucket, Key=f"imported/images/{key}", Body=png(image))
    rc, logs = ray_head.submit(
        ["jobs/segment.py", "--input", s3.uri("imported/images"), "--output",
         s3.uri("imported/masks"), "--model", f"models:/{MODEL_NAME}/1"],
        env=env,
    )  # fmt: skip
    assert rc == 0, logs[-4000:]
    classes_seen = set()
    for key, image in pictures.items():
        mask = Image.open(io.BytesIO(storage.read_bytes(s3.uri(f"imported/masks/{key}"))))
        with torch.inference_mode():
            logits = net(normalize(image, preprocess.CAFFE)[None])
        expected = logits.argmax(1)[0].numpy()
        assert np.array_equal(np.asarray(mask), expected), key
        assert np.asarray(mask.getpalette()).reshape(-1, 3)[:3].tolist() == [
            list(c) for c in COLORS
        ]
        classes_seen |= set(np.unique(expected).tolist())
        answer = served.predict(pd.DataFrame({"image": [png(image)]}))
        assert np.array_equal(answer["mask"][0], expected), key
    assert len(classes_seen) > 1  # the comparison above could tell weights apart
