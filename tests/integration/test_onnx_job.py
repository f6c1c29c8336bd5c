"""ONNX on real services (issue 29): `jobs/export.py --register` on a registered version through
the MLflow test server (the ONNX model found from the version's tags runs and gives the
checkpoint's masks), and a night of `jobs/segment.py --runtime onnxruntime` (ray job submit)
on the demo's model giving the PyTorch night's masks, statistics and state."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from helpers_data import varied_model
from PIL import Image

from fcn import storage, tracking
from fcn.engine import checkpoint, inference, onnx_export, onnx_runtime
from fcn.nightly import state

pytestmark = pytest.mark.integration

MODEL = "fcn-onnx-it"


def tiny_checkpoint(path) -> str:
    """A small FCN-8s (1/16 width) whose argmax varies over an image."""
    model = varied_model(3, "fcn8s", width=0.0625)
    config = {"model": "fcn8s", "num_classes": 3, "width": 0.0625, "preprocessing": "caffe"}
    checkpoint.save(model.state_dict(), config, str(path))
    return str(path)


@pytest.mark.slow  # two job runs, each importing torch and MLflow: ~60 s on 2 shared cores
def test_export_attaches_a_checked_onnx_model_to_the_registered_version(
    mlflow_server, tmp_path, capsys
):
    import mlflow

    local = tiny_checkpoint(tmp_path / "checkpoint")
    run_id = tracking.start_run("onnx-it", "tiny")
    version, _ = tracking.register_checkpoint(run_id, local, MODEL, 0.5)
    tracking.end_run(run_id)
    out = tmp_path / "onnx"
    args = [sys.executable, "jobs/export.py", "--model", f"models:/{MODEL}@champion",
            "--output", str(out), "--register",
            "--check-sizes", "1x1", "31x47", "1x300"]  # fmt: skip
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"exported models:/{MODEL}/{version}" in done.stdout
    assert done.stdout.count(" ok") == 3, done.stdout
    data = (out / "model.onnx").read_bytes()

    # A serving team's path: the registry version -> its ONNX model -> ONNX Runtime.
    tags = tracking.client().get_model_version(MODEL, version).tags
    assert tags["onnx_sha256"] == hashlib.sha256(data).hexdigest()
    proto = mlflow.onnx.load_model(tags["onnx_model"])
    meta = onnx_export.read_metadata(proto)
    assert meta["fcn.model"] == "fcn8s" and '"BGR"' in meta["fcn.preprocessing"]
    loaded = inference.load_model(local)
    image = np.random.default_rng(0).integers(0, 256, (45, 61, 3), dtype=np.uint8)
    want = inference.predict(loaded.model, image[None], loaded.preprocessing)
    spec = json.loads(meta["fcn.preprocessing"])  # the file says how to feed it
    got = inference.predict(onnx_runtime.OnnxModel(proto), image[None], spec)
    assert len(np.unique(want)) > 1
    assert (want == got).mean() >= onnx_runtime.MASK_AGREEMENT

    # Attaching the same file again (in this process: the job's main) logs nothing new.
    spec = importlib.util.spec_from_file_location("export_job", REPO / "jobs" / "export.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    assert job.main(args[2:]) == 0
    assert f"registered: {tags['onnx_model']}" in capsys.readouterr().out
    assert tracking.client().get_model_version(MODEL, version).tags == tags


def pngs(root) -> dict[str, np.ndarray]:
    """mask key -> class map of every mask PNG under `root` (folders starting with _ are not
    masks)."""
    return {
        p.relative_to(root).as_posix(): np.asarray(Image.open(p))
        for p in sorted(root.rglob("*.png"))
        if not p.relative_to(root).parts[0].startswith("_")
    }


def manifest(root) -> dict[str, dict]:
    rows = {}
    for path in sorted((root / "_runs").glob("*.parquet")):
        for row in pq.read_table(io.BytesIO(path.read_bytes())).to_pylist():
            rows[row["uri"]] = row
    return rows


@pytest.mark.slow
def test_a_night_on_onnx_runtime_gives_the_pytorch_nights_masks(demo, ray_head, tmp_path):
    root = demo[0]  # the demo segmented its unlabeled images with PyTorch into masks/
    output = tmp_path / "masks"
    args = ["jobs/segment.py", "--input", str(root / "data" / "unlabeled"),
            "--output", str(output), "--model", str(root / "runs" / "demo" / "best"),
            "--runtime", "onnxruntime"]  # fmt: skip
    rc, logs = ray_head.submit(args)
    assert rc == 0, logs[-4000:]

    torch_masks, onnx_masks = pngs(root / "masks"), pngs(output)
    assert set(onnx_masks) == set(torch_masks) and len(torch_masks) > 0
    same = sum(int((onnx_masks[k] == torch_masks[k]).sum()) for k in torch_masks)
    total = sum(m.size for m in torch_masks.values())
    assert same / total >= onnx_runtime.MASK_AGREEMENT, same / total
    assert len(np.unique(np.concatenate([m.ravel() for m in torch_masks.values()]))) > 1

    want, got = manifest(root / "masks"), manifest(output)
    assert set(got) == set(want)
    for uri, row in got.items():
        assert row["status"] == want[uri]["status"] == "ok"
        for name in inference.STATISTICS:
            assert row[name] == pytest.approx(want[uri][name], abs=1e-3), (uri, name)
    table, _ = state.read(storage.locate(str(output)))
    assert sorted(table.column("status").to_pylist()) == ["ok"] * len(torch_masks)
