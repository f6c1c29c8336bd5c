"""A 5-class dataset with its own names and palette, end to end through `ray job submit`:
ingest -> train -> evaluate -> segment -> compare, on the S3 test server and the MLflow test
server. The class list is given once (`ingest --classes`) and must reach the checkpoint, the
MLflow metric names, the evaluation run, the masks' palette and compare's per-class plot. A
photo stored sideways (EXIF orientation 6) is segmented as displayed.

Tiny on purpose (2 cores): 56-64 px images, a quarter-width FCN-32s, a few steps. What is
under test is where names and colours go, not how well the model learns.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn import storage, tracking
from fcn.data import synthetic
from fcn.engine import checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT, MODEL = "classes-it", "fcn-classes-it"
CLASSES = synthetic.custom_classes()  # background, apple, brick, leaf, sky; not VOC colours


def run_ok(ray_head, args, env, timeout=600) -> str:
    rc, logs = ray_head.submit(args, env=env, timeout=timeout)
    assert rc == 0, logs[-4000:]
    return logs


def test_a_custom_class_list_travels_from_data_to_masks(ray_head, s3, mlflow_server, tmp_path):
    env = {**s3.env, **mlflow_server.env}
    local = tmp_path / "src"
    synthetic.generate(
        voc=local / "VOC2012", num_images=12, min_size=56, max_size=64, seed=5,
        class_list=CLASSES,
    )  # fmt: skip
    source = s3.upload_tree(local / "VOC2012", "classes-it/VOC2012")
    data = s3.uri("classes-it/data")
    run_ok(ray_head, ["jobs/ingest.py", "--voc", source, "--output", data,
                      "--classes", f"{source}/{synthetic.CLASS_FILE}"], env)  # fmt: skip

    run_ok(ray_head, [
        "jobs/train.py", "--data", data, "--storage", s3.uri("classes-it/runs"),
        "--name", "five", "--experiment", EXPERIMENT, "--registered-model", MODEL,
        "--model", "fcn32s", "--width", "0.25", "--preset", "fast", "--workers", "1",
        "--iterations", "4", "--eval-every", "4",
    ], env)  # fmt: skip
    client = tracking.client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'five'")
    per_class = {k for k in run.data.metrics if k.startswith("iu_")}
    assert per_class and per_class <= {f"iu_{name}" for name in CLASSES.names}, per_class
    assert run.data.params["num_classes"] == "5"
    best = s3.uri("classes-it/runs/five/best")
    assert checkpoint.load_config(best).classes == CLASSES

    run_ok(ray_head, ["jobs/evaluate.py", "--data", data, "--split", "val", "--model",
                      f"models:/{MODEL}@champion", "--experiment", EXPERIMENT + "-eval",
                      "--workers", "0"], env)  # fmt: skip
    evaluation = client.get_experiment_by_name(EXPERIMENT + "-eval")
    (scored,) = client.search_runs([evaluation.experiment_id])
    assert {k for k in scored.data.metrics if k.startswith("iu_")} <= {
        f"iu_{name}" for name in CLASSES.names
    } and "mean_iu" in scored.data.metrics

    # Tonight's images: two scenes and a photo stored sideways.
    night = tmp_path / "night"
    night.mkdir()
    rng = np.random.default_rng(9)
    for k in range(2):
        image, _ = synthetic.render_scene(rng, 60, 60, classes=(1, 2, 3, 4))
        Image.fromarray(image).save(night / f"scene{k}.png")
    shown, _ = synthetic.render_scene(rng, 48, 80, classes=(1, 2))
    (night / "sideways.jpg").write_bytes(synthetic.sideways_jpeg(shown, orientation=6))
    incoming = s3.upload_tree(night, "classes-it/incoming")
    masks = s3.uri("classes-it/masks")
    run_ok(ray_head, ["jobs/segment.py", "--input", incoming, "--output", masks,
                      "--model", f"models:/{MODEL}@champion"], env)  # fmt: skip
    for name, size in (("scene0", (60, 60)), ("sideways", (80, 48))):  # PIL size is (W, H)
        png = Image.open(io.BytesIO(storage.read_bytes(f"{masks}/{name}.png")))
        assert png.mode == "P" and png.size == size
        palette = np.asarray(png.getpalette()[: 3 * CLASSES.num_classes]).reshape(-1, 3)
        assert [tuple(c) for c in palette] == list(CLASSES.colors)

    report = s3.uri("classes-it/report")
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "compare.py"), "--experiment", EXPERIMENT,
         "--output", report],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    plot = np.asarray(Image.open(io.BytesIO(storage.read_bytes(f"{report}/per_class_iu.png"))))
    pixels = plot[..., :3].reshape(-1, 3)
    # Bars are filled with the class colours: the background bar (IU > 0 even this early) is a
    # block of (10, 10, 10), a colour no VOC class and no anti-aliased text would fill.
    filled = {c: int((pixels == c).all(axis=1).sum()) for c in CLASSES.colors}
    assert filled[CLASSES.colors[0]] > 100, filled
