"""Evaluation on local files: every labeled image scored once across processes, masks from the
one `fcn.engine.inference.predict`, and the evaluate job's checks, which fail before Ray starts with
exit status 2 and one line."""

from __future__ import annotations

import dataclasses
import io
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import varied_model, write_split
from helpers_gloo import spawn
from torch import nn

from fcn import storage
from fcn.config import EvaluateConfig
from fcn.data.contract import check_split
from fcn.engine import checkpoint, images, metrics
from fcn.engine.inference import load_model, predict
from fcn.engine.models import preprocess
from fcn.evaluation.job import validate
from fcn.evaluation.score import evaluate, shard_rows

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 4


class PixelNet(nn.Module):
    """A tiny fixed per-pixel classifier: evaluation is what is under test, not the model."""

    def __init__(self, num_classes):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, num_classes, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("evaluate") / "data")
    write_split(root, "val", 5, size=[24, 40], classes=(1, 2, 3), files=2)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("evaluate") / "checkpoint")
    config = {"model": "fcn-alexnet", "num_classes": NUM_CLASSES, "preprocessing": "torchvision"}
    checkpoint.save(varied_model(NUM_CLASSES).state_dict(), config, uri)
    return uri


# --- sharding and scoring --------------------------------------------------------------------


def test_shards_cover_every_labeled_image_once(tmp_path):
    ids = write_split(str(tmp_path), "val", 7, size=(8, 8), files=3)
    shards = [[r.image_id for r in shard_rows(str(tmp_path), "val", rank, 2)] for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == sorted(ids)
    assert (len(shards[0]), len(shards[1])) == (4, 3)
    assert [r.image_id for r in shard_rows(str(tmp_path), "val", 0, 1, limit=3)] == ids[:3]


def test_unlabeled_rows_are_skipped_and_not_counted_by_limit(tmp_path):
    ids = write_split(str(tmp_path), "val", 3, size=(8, 8), files=1)
    (part,) = storage.list_files(storage.join(str(tmp_path), "val"))
    table = pq.read_table(part.uri)
    unlabeled = table.slice(0, 1).set_column(
        table.schema.get_field_index("mask"), "mask", pa.array([None], pa.binary())
    )
    pq.write_table(pa.concat_tables([unlabeled, table]), part.uri)
    assert [r.image_id for r in shard_rows(str(tmp_path), "val", limit=2)] == ids[:2]


def _eval_worker(rank, world, root, out):
    for split in ("odd", "one"):
        _, hist, _ = evaluate(PixelNet(4), root, split, preprocess.TORCHVISION, 4,
                              rank=rank, world=world)  # fmt: skip
        np.save(os.path.join(out, f"{split}{rank}.npy"), hist)


def test_two_process_evaluation_equals_single_process(tmp_path):
    """7 images (odd: 4 + 3) and 1 image (one process has none): the reduced confusion matrix
    of 2 gloo processes equals one process evaluating everything."""
    root = str(tmp_path / "data")
    write_split(root, "odd", 7, size=[9, 17], classes=(1, 2, 3), files=2)
    write_split(root, "one", 1, size=[9, 17], classes=(1, 2, 3), files=1)
    spawn(_eval_worker, 2, tmp_path, root, str(tmp_path))
    for split in ("odd", "one"):
        _, single, _ = evaluate(PixelNet(4), root, split, preprocess.TORCHVISION, 4)
        assert single.sum() > 0
        for rank in (0, 1):
            assert np.array_equal(np.load(tmp_path / f"{split}{rank}.npy"), single)


def test_scores_come_from_the_one_predict_on_decoded_images(data):
    """The confusion matrix equals inference.predict on each decoded image; samples carry
    the decoded image, its mask and that prediction; the model's mode is given back."""
    model = varied_model(NUM_CLASSES).train()
    scores, hist, samples = evaluate(
        model, data, "val", preprocess.TORCHVISION, NUM_CLASSES, keep=2
    )
    assert model.training
    model.eval()  # what evaluate does for its pass (fcn-alexnet has dropout)
    expected = np.zeros_like(hist)
    for row in shard_rows(data, "val"):
        image, mask = images.decode_image(row.image), images.decode_mask(row.mask)
        pred = predict(model, image[None], preprocess.TORCHVISION)[0]
        expected += metrics.confusion_matrix(mask, pred, NUM_CLASSES)
    assert np.array_equal(hist, expected) and hist.sum() > 0
    assert scores["mean_iu"] == metrics.scores(expected)["mean_iu"]
    assert [s[0] for s in samples] == [r.image_id for r in shard_rows(data, "val", limit=2)]
    image_id, image, mask, pred = samples[0]
    assert image.dtype == np.uint8 and image.shape[:2] == mask.shape == pred.shape


def test_scoring_predicts_with_the_jobs_tiling(data, monkeypatch):
    """--tile, --tile-memory-mb and --tile-margin reach the one predict, unchanged."""
    from fcn.evaluation import score

    seen = []

    def spy(model, images, spec, **tiling):
        seen.append(tiling)
        return predict(model, images, spec, **tiling)

    monkeypatch.setattr(score, "predict", spy)
    config = EvaluateConfig(data="d", model="m", tile="512", tile_memory_mb=3, tile_margin=64)
    _, hist, _ = evaluate(
        PixelNet(NUM_CLASSES), data, "val", preprocess.TORCHVISION, NUM_CLASSES,
        tiling=config.validate().tiling(),
    )  # fmt: skip
    assert hist.sum() > 0 and len(seen) == 5
    assert seen[0] == {"tile": "512", "tile_memory": 3 << 20, "tile_margin": 64}


# --- checks before Ray starts ----------------------------------------------------------------


def test_a_missing_split_names_it(data):
    with pytest.raises(FileNotFoundError, match=r"no Parquet files under .*/tst'"):
        check_split(data, "tst")


def test_a_split_without_the_mask_column_names_it(tmp_path):
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_id": ["a"], "image": [b"x"]}), buffer)
    storage.write_bytes(storage.join(str(tmp_path), "val/part-0.parquet"), buffer.getvalue())
    with pytest.raises(ValueError, match="lacks column.s. mask"):
        check_split(str(tmp_path), "val")


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ({"workers": -1}, "--workers"),
        ({"limit": 0}, "--limit"),
        ({"cpus_per_worker": 0}, "--cpus"),
        ({"tile": "big"}, "--tile must"),
        ({"tile_margin": 33}, "--tile-margin"),
    ],  # fmt: skip
)
def test_nonsense_flags_are_refused_by_the_config(flags, named):
    with pytest.raises(ValueError, match=named):
        EvaluateConfig(data="d", model="m", **flags).validate()


def test_a_tile_below_the_nets_minimum_is_refused_before_ray(data, model_dir):
    with pytest.raises(ValueError, match="too small for FCNAlexNet: at least 480"):
        validate(EvaluateConfig(data=data, model=model_dir, tile="300"))
    assert validate(EvaluateConfig(data=data, model=model_dir, tile="480")).tile == "480"


def test_validate_makes_local_paths_absolute(data, model_dir, monkeypatch):
    monkeypatch.chdir(Path(data).parent)
    config = EvaluateConfig(data="data", model=os.path.relpath(model_dir), storage="runs")
    checked = validate(config)
    assert checked == dataclasses.replace(
        config, data=data, model=model_dir, storage=str(Path(data).parent / "runs")
    )
    remote = EvaluateConfig(data="s3://b/d", model="models:/fcn@champion")
    assert (remote.data, remote.model) == ("s3://b/d", "models:/fcn@champion")


def broken_checkpoint(tmp_path) -> str:
    uri = str(tmp_path / "broken")
    checkpoint.save({"w": torch.ones(1)}, {"model": "fcn-alexnet", "num_classes": 4}, uri)
    return uri


def job_main():
    return runpy.run_path(str(REPO / "jobs" / "evaluate.py"))["main"]


@pytest.mark.parametrize("case", ["no split", "workers -1", "limit -1", "no checkpoint"])
def test_the_job_exits_2_with_one_line(case, data, model_dir, tmp_path, capsys):
    argv = {
        "no split": ["--data", data, "--split", "test", "--model", model_dir],
        "workers -1": ["--data", data, "--model", model_dir, "--workers", "-1"],
        "limit -1": ["--data", data, "--model", model_dir, "--limit", "-1"],
        "no checkpoint": ["--data", data, "--model", str(tmp_path / "nothing")],
    }[case]
    assert job_main()(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: ") and case.split()[-1] in captured.err


def test_a_checkpoint_missing_a_field_fails_before_ray_or_mlflow(data, tmp_path):
    """In a fresh interpreter: exit status 2, one line naming the field, and neither Ray nor
    MLflow imported (so no Ray started and no MLflow run created)."""
    code = (
        "import runpy, sys; main = runpy.run_path('jobs/evaluate.py')['main']; "
        f"rc = main(['--data', {data!r}, '--model', {broken_checkpoint(tmp_path)!r}]); "
        "print(rc, sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "2 []", done.stderr
    assert done.stderr.count("\n") == 1 and "lacks 'preprocessing'" in done.stderr


def test_workers_0_scores_in_the_drivers_process_without_ray(data, model_dir, tmp_path):
    """`--workers 0` (Ray Train's local mode): the job scores in its own process, starts no
    Ray, and logs what one process evaluating the split computes."""
    from mlflow import MlflowClient

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = (
        "import runpy, ray; main = runpy.run_path('jobs/evaluate.py')['main']; "
        f"rc = main(['--data', {data!r}, '--model', {model_dir!r}, '--workers', '0', "
        "'--experiment', 'local-mode']); print(rc, ray.is_initialized())"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert done.stdout.strip().splitlines()[-1] == "0 False", done.stdout + done.stderr
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([client.get_experiment_by_name("local-mode").experiment_id])
    loaded = load_model(model_dir)  # as each evaluation worker loads it
    scores, _, _ = evaluate(loaded.model, data, "val", loaded.preprocessing, loaded.num_classes)
    assert run.data.metrics["mean_iu"] == pytest.approx(scores["mean_iu"], abs=1e-6)
    assert run.data.params["workers"] == "0"
