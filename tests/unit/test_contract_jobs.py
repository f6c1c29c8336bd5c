"""A checkpoint that breaks the contract stops `segment` and `evaluate` in the driver, before
Ray starts: exit status 2 and one line that names the missing field."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_data import write_split

from fcn.engine import checkpoint
from fcn.engine.models import build_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    """A real checkpoint whose config.json lost its `preprocessing`."""
    root = tmp_path_factory.mktemp("broken")
    model = build_model("fcn32s", 3, width=0.125)
    config = {"model": "fcn32s", "num_classes": 3, "width": 0.125, "preprocessing": "caffe"}
    checkpoint.save(model.state_dict(), config, str(root / "ckpt"))
    del config["preprocessing"]
    (root / "ckpt" / "config.json").write_text(json.dumps(config))
    assert torch.load(root / "ckpt" / "model.pt", weights_only=True)  # the weights are fine
    return root


def run_job(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "RAY_ADDRESS": "http://127.0.0.1:9"},  # no Ray there
    )  # fmt: skip


def one_line_naming(done: subprocess.CompletedProcess, field: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_segment_refuses_the_checkpoint_before_ray(broken, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.png").write_bytes(b"not read: the model is checked first")
    done = run_job("jobs/segment.py", "--input", str(images), "--output", str(tmp_path / "out"),
                   "--model", str(broken / "ckpt"))  # fmt: skip
    one_line_naming(done, "preprocessing")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))


def test_evaluate_refuses_the_checkpoint_before_ray(broken, tmp_path):
    write_split(str(tmp_path / "data"), "val", 2, size=(16, 16))
    done = run_job("jobs/evaluate.py", "--data", str(tmp_path / "data"), "--model",
                   str(broken / "ckpt"))  # fmt: skip
    one_line_naming(done, "preprocessing")
