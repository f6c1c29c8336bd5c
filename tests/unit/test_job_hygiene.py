"""The train and evaluate jobs' drivers do each thing once and leave nothing behind: the
settings are checked once, a models:/ init is downloaded once (into a folder that is removed),
a remote .pth is copied once, and an evaluation leaves no temporary folder.

Each test fails on the code before #24's fixes (checked against its parent commit)."""

from __future__ import annotations

import os
import runpy
import tempfile
from pathlib import Path

import fsspec
import pytest
import torch
from helpers_data import varied_model, write_split

from fcn import storage, tracking
from fcn.config import EvaluateConfig
from fcn.engine import checkpoint
from fcn.engine.models import build_model

REPO = Path(__file__).resolve().parents[2]


class Stop(Exception):
    """Raised where Ray Train would start: what the driver did before is under test."""


def temporary(monkeypatch, tmp_path) -> Path:
    """A fresh folder as this process's temporary directory (tempfile.gettempdir())."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def left_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def counting(monkeypatch, owner, name: str) -> list:
    """Wrap `owner.name` so that every call is recorded (its positional arguments)."""
    calls, real = [], getattr(owner, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return calls


def test_train_validates_once_and_downloads_a_models_init_once(tmp_path, monkeypatch):
    import mlflow
    import ray

    from fcn.training import driver

    monkeypatch.chdir(tmp_path)  # a local store's artifacts land here
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    source = tmp_path / "stage1"
    model = build_model("fcn32s", 3, width=0.125)
    saved = {"model": "fcn32s", "num_classes": 3, "width": 0.125, "preprocessing": "caffe"}
    checkpoint.save(model.state_dict(), saved, str(source))
    run_id = tracking.start_run("stage1", "stage1", uri=uri)
    tracking.register_checkpoint(run_id, str(source), "stage1", 0.5, uri)
    data = str(tmp_path / "data")
    write_split(data, "train", 2, size=(24, 24), classes=(1, 2), files=1)
    write_split(data, "val", 1, size=(24, 24), classes=(1, 2), seed=1, files=1)

    validations = counting(monkeypatch, driver, "validate")
    downloads = counting(monkeypatch, mlflow.artifacts, "download_artifacts")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray: it stops before
    monkeypatch.setattr(driver, "_fit", lambda *args: (_ for _ in ()).throw(Stop()))
    folder = temporary(monkeypatch, tmp_path)
    job = runpy.run_path(str(REPO / "jobs" / "train.py"))
    with pytest.raises(Stop):
        job["main"](["--data", data, "--storage", str(tmp_path / "runs"), "--name", "stage2",
                     "--model", "fcn16s", "--num-classes", "3", "--width", "0.125",
                     "--init", "models:/stage1@champion"])  # fmt: skip
    assert len(validations) == 1
    assert len(downloads) == 1
    assert left_in(folder) == []


def test_a_remote_weights_file_is_copied_once(tmp_path, monkeypatch):
    from fcn.training import init

    memory = fsspec.filesystem("memory")
    body = b"weights" * 100
    memory.pipe_file("/bucket/backbones/vgg16.pth", body)
    uri = "s3://bucket/backbones/vgg16.pth"
    monkeypatch.setattr(storage, "filesystem", lambda u: (memory, "/" + storage.strip_scheme(u)))
    monkeypatch.setattr(storage, "read_bytes", lambda u: memory.cat_file(storage.filesystem(u)[1]))
    reads = counting(monkeypatch, storage, "read_bytes")
    folder = temporary(monkeypatch, tmp_path)
    first, second = init._local_file(uri), init._local_file(uri)
    assert first == second and Path(first).read_bytes() == body
    assert len(reads) == 1 and len([p for p in folder.rglob("*") if p.is_file()]) == 1
    memory.pipe_file("/bucket/backbones/vgg16.pth", b"other weights")  # a new version
    assert Path(init._local_file(uri)).read_bytes() == b"other weights"
    memory.rm("/bucket", recursive=True)


def test_evaluate_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """Ray Train's local mode (no workers: the loop runs in this process) so that the
    worker's temporary files are this process's too."""
    import ray
    import ray.train

    from fcn.evaluation import job

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    data = str(tmp_path / "data")
    write_split(data, "val", 3, size=[24, 40], classes=(1, 2, 3), files=1)
    saved = {"model": "fcn-alexnet", "num_classes": 4, "preprocessing": "torchvision"}
    checkpoint.save(varied_model(4).state_dict(), saved, str(tmp_path / "ckpt"))
    config = job.validate(EvaluateConfig(data=data, model=str(tmp_path / "ckpt"), workers=1))
    local_mode = ray.train.ScalingConfig
    monkeypatch.setattr(
        ray.train, "ScalingConfig",
        lambda **kw: local_mode(**{**kw, "num_workers": 0, "resources_per_worker": None}),
    )  # fmt: skip
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    threads = torch.get_num_threads()  # the loop sets this process's torch threads
    folder = temporary(monkeypatch, tmp_path)
    try:
        scores = job.run(config)
    finally:
        torch.set_num_threads(threads)
    assert 0 <= scores["mean_iu"] <= 1
    assert tracking.client().get_run(scores["run_id"]).info.status == "FINISHED"
    assert left_in(folder) == []
    assert os.listdir(tmp_path / "ckpt")  # the model itself is untouched
