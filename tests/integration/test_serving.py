"""A registered FCN is an MLflow model: `mlflow.pyfunc.load_model` in a fresh process and
`mlflow models serve` over HTTP give the masks of a direct forward pass, on the MLflow test
server (artifacts in the S3 test server), and the served mask equals the one `jobs/segment.py`
writes (ray job submit) for the same image and version. The version's tags say what it is.
A version registered the old way (the bare checkpoint directory) still resolves.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from conftest import BIN, free_port, start, stop_group, tail, wait_http
from helpers_data import varied_model
from PIL import Image

from fcn import tracking
from fcn.engine import checkpoint, images, inference
from fcn.tracking.models import load_model

pytestmark = pytest.mark.integration

MODEL = "fcn-serving-it"


def tiny_checkpoint(path) -> str:
    """A real, small FCN-32s (1/16 width) whose argmax varies over an image."""
    model = varied_model(3, "fcn32s", width=0.0625)
    config = {"model": "fcn32s", "num_classes": 3, "width": 0.0625,
              "preprocessing": "torchvision"}  # fmt: skip
    checkpoint.save(model.state_dict(), config, str(path))
    return str(path)


def picture_png(height=45, width=61) -> bytes:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 3] = (200, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def registered(mlflow_server, tmp_path_factory):
    """Checkpoint registered through fcn.tracking; (local checkpoint, expected mask, png,
    version, run id)."""
    local = tiny_checkpoint(tmp_path_factory.mktemp("serving") / "checkpoint")
    run_id = tracking.start_run("serving-it", "tiny")
    version, champion = tracking.register_checkpoint(run_id, local, MODEL, 0.5)
    tracking.end_run(run_id)
    assert champion
    png = picture_png()
    loaded = inference.load_model(local)
    image = images.decode_image(png)
    expected = inference.predict(loaded.model, image[None], loaded.preprocessing)[0]
    assert len(np.unique(expected)) > 1  # a varied map: equality below means something
    return local, expected, png, version, run_id


def test_the_version_says_what_it_is_and_where_to_see_it(registered, mlflow_server):
    *_, version, run_id = registered
    tags = tracking.client().get_model_version(MODEL, version).tags
    assert {k: tags[k] for k in ("model", "width", "num_classes", "classes")} == {
        "model": "fcn32s", "width": "0.0625", "num_classes": "3", "classes": "0,1,2"
    }  # fmt: skip
    assert tags["git_commit"] == tracking.git_commit()
    experiment = tracking.client().get_run(run_id).info.experiment_id
    assert tracking.ui_links(mlflow_server.uri, run_id, MODEL, version) == [
        f"MLflow run: {mlflow_server.uri}/#/experiments/{experiment}/runs/{run_id}",
        f"MLflow model version: {mlflow_server.uri}/#/models/{MODEL}/versions/{version}",
    ]


def test_pyfunc_in_a_fresh_process_predicts_the_direct_masks(registered, mlflow_server, tmp_path):
    _, expected, png, *_ = registered
    (tmp_path / "image.png").write_bytes(png)
    script = (
        "import sys, numpy as np, pandas as pd, mlflow\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}@champion')\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "out = model.predict(pd.DataFrame({'image': [data]}))\n"
        "np.save(sys.argv[2], out['mask'][0])\n"
        "print('fcn from', __import__('fcn').__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "image.png"), str(tmp_path / "mask.npy")],
        cwd=tmp_path, env={**os.environ, **mlflow_server.env},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "/code/fcn/" in done.stdout  # the package copy inside the model, not a checkout
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), expected)


def segment_job_mask(ray_head, env: dict, model: str, png: bytes, root) -> np.ndarray:
    """The mask `jobs/segment.py` (ray job submit) writes for image `png` with `model`."""
    (root / "images").mkdir()
    (root / "images" / "picture.png").write_bytes(png)
    args = ["jobs/segment.py", "--input", str(root / "images"), "--output", str(root / "masks"),
            "--model", model, "--experiment", "serving-it-segment"]  # fmt: skip
    rc, logs = ray_head.submit(args, env=env)
    assert rc == 0 and "1 done" in logs, logs[-4000:]
    return images.decode_mask((root / "masks" / "picture.png").read_bytes())


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_segment_jobs_mask(
    registered, mlflow_server, s3, ray_head, tmp_path
):
    _, expected, png, version, _ = registered
    port = free_port()
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]  # fmt: skip
    log = tmp_path / "serve.log"
    # The server runs `uvicorn` by name: the environment's bin/ must be on PATH, as it is in
    # an activated virtualenv. No PYTHONPATH: the model's own copy of fcn is what serves.
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    proc = start(cmd, {**mlflow_server.env, "PYTHONPATH": "", "PATH": path}, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 240, proc, log)
        body = {"dataframe_split": {"columns": ["image"],
                                    "data": [[base64.b64encode(png).decode()]]}}  # fmt: skip
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
    except Exception:
        print(tail(log))
        raise
    finally:
        stop_group(proc)
    prediction = answer["predictions"][0]
    mask = np.asarray(prediction["mask"], dtype=np.uint8)
    assert mask.shape == (45, 61)  # the image's size
    np.testing.assert_array_equal(mask, expected)
    served_png = base64.b64decode(prediction["png"])
    np.testing.assert_array_equal(images.decode_mask(served_png), mask)

    # The segment job, given the same version, writes the same mask for the same image.
    # `ray job submit` leaves .git behind: the submitter names the commit.
    env = {**s3.env, **mlflow_server.env, tracking.GIT_COMMIT_ENV: tracking.git_commit()}
    written = segment_job_mask(ray_head, env, f"models:/{MODEL}/{version}", png, tmp_path)
    np.testing.assert_array_equal(written, mask)
    # Its MLflow run names the code that made the masks.
    (run,) = tracking.client().search_runs(
        [tracking.client().get_experiment_by_name("serving-it-segment").experiment_id]
    )
    assert run.data.tags[tracking.TAG_SOURCE_NAME] == "jobs/segment.py"
    assert run.data.tags[tracking.TAG_GIT_COMMIT] == tracking.git_commit()
    assert "None" not in run.data.params.values()


def test_a_version_registered_as_a_bare_directory_still_resolves(registered, tmp_path):
    local, *_ = registered
    mlflow_client = tracking.client()
    run_id = tracking.start_run("serving-it", "old-layout")
    mlflow_client.log_artifacts(run_id, local, "checkpoint")
    tracking.end_run(run_id)
    mlflow_client.create_registered_model(f"{MODEL}-old")
    version = mlflow_client.create_model_version(
        f"{MODEL}-old", source=f"runs:/{run_id}/checkpoint", run_id=run_id
    ).version
    resolved = tracking.resolve_checkpoint(f"models:/{MODEL}-old/{version}", str(tmp_path))
    state, config = checkpoint.load(resolved)
    assert config.width == 0.0625 and "score_fr.weight" in state
    model = load_model(f"models:/{MODEL}-old/{version}")
    assert model.num_classes == 3
