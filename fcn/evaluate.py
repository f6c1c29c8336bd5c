"""Distributed evaluation: every image of a split scored exactly once across the workers.

The split's Parquet files are listed in sorted order and rows are numbered globally; worker
`rank` of `world` takes rows `i % world == rank`. No sampler padding (which would count an
image twice when the split size does not divide), no dropping; the confusion matrices are
summed across workers (`fcn.metrics.all_reduce_confusion`), so the scores equal a single
process evaluating the whole split.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from fcn import images, metrics, storage
from fcn.data import transforms
from fcn.inference import load_model


@dataclass
class Row:
    index: int
    image_id: str
    image: bytes
    mask: bytes


def split_files(data: str, split: str) -> list[str]:
    uri = storage.join(data, split)
    files = [f.uri for f in storage.list_files(uri, extensions=(".parquet",))]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {uri!r}: was the dataset ingested?")
    return files


def shard_rows(
    data: str, split: str, rank: int = 0, world: int = 1, limit: int | None = None
) -> Iterator[Row]:
    """Rows of `split` owned by `rank` (global row index % world == rank), in order."""
    index = 0
    for uri in split_files(data, split):
        fs, path = storage.pyarrow_filesystem(uri)
        parquet = pq.ParquetFile(fs.open_input_file(path))
        for batch in parquet.iter_batches(batch_size=16, columns=["image_id", "image", "mask"]):
            columns = batch.to_pydict()
            for image_id, image, mask in zip(
                columns["image_id"], columns["image"], columns["mask"], strict=True
            ):
                if limit is not None and index >= limit:
                    return
                if mask is not None and index % world == rank:
                    yield Row(index, image_id, image, mask)
                if mask is not None:
                    index += 1  # unlabeled rows are not part of an evaluation


@torch.no_grad()
def predict(model, image: np.ndarray, device, channels_last: bool = False) -> torch.Tensor:
    """Class index per pixel (H x W, on `device`) of one normalized 3 x H x W image."""
    x = torch.from_numpy(image).unsqueeze(0).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x).argmax(1)[0]


def evaluate_shard(model, rows, spec, num_classes, device, channels_last=False, keep=0):
    """Confusion matrix of this worker's rows, and up to `keep` (id, image, mask, pred) samples."""
    was_training = model.training
    model.eval()
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    samples = []
    try:
        for row in rows:
            image, mask = transforms.eval_pair(row.image, row.mask, spec)
            pred = predict(model, image, device, channels_last)
            hist += metrics.confusion_matrix(torch.from_numpy(mask).to(device), pred, num_classes)
            if len(samples) < keep:
                raw = images.decode_image(row.image)
                samples.append((row.image_id, raw, mask, pred.cpu().numpy().astype(np.uint8)))
    finally:
        model.train(was_training)
    return hist, samples


def evaluate(model, data, split, spec, num_classes, device, rank=0, world=1, **options):
    """Scores of the whole split: this rank's shard, confusion summed over all processes.

    Every process must call this (the all-reduce is collective). Returns (scores, hist, samples).
    """
    limit = options.pop("limit", None)
    hist, samples = evaluate_shard(
        model, shard_rows(data, split, rank, world, limit), spec, num_classes, device, **options
    )
    hist = metrics.all_reduce_confusion(hist)
    return metrics.scores(hist), hist, samples


# --- the evaluation job ----------------------------------------------------------------------


def worker_resources(cpus: float, gpu: bool) -> dict:
    return {"CPU": cpus, "GPU": 1} if gpu else {"CPU": cpus}


def eval_loop_per_worker(loop: dict) -> None:
    """One evaluation worker: its shard of the split, confusion summed over all workers."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(loop["cpus_per_worker"])))
    loaded = load_model(loop["model"], device)
    model, config = loaded.model, loaded.config
    scores, hist, _ = evaluate(
        model, loop["data"], loop["split"], model.preprocessing, config["num_classes"], device,
        rank=context.get_world_rank(), world=context.get_world_size(), limit=loop["limit"],
    )  # fmt: skip
    metrics_out = {**metrics.named_scores(scores, loaded.classes.names), "hist": hist.tolist()}
    # Ray Train keeps only metrics that come with a checkpoint: rank 0 attaches a tiny one.
    if context.get_world_rank() != 0:
        ray.train.report(metrics_out)
        return
    directory = tempfile.mkdtemp(prefix="fcn-eval-")
    with open(os.path.join(directory, "scores.json"), "w") as f:
        json.dump(metrics_out, f)
    ray.train.report(metrics_out, checkpoint=ray.train.Checkpoint.from_directory(directory))


def run(config) -> dict:
    """Evaluate `config.model` on `config.split` over `config.workers` Ray Train workers and log
    an MLflow evaluation run. Returns the scores (and `hist`, `run_id`)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fcn import tracking
    from fcn.config import to_dict
    from fcn.runtime import init_ray

    init_ray()
    split_files(config.data, config.split)  # a clear error before any worker starts
    uri = tracking.tracking_uri()
    storage_path = config.storage or tempfile.mkdtemp(prefix="fcn-eval-")
    filesystem = None
    if storage.is_remote(storage_path):
        filesystem, storage_path = storage.pyarrow_filesystem(storage_path)
    run_id = tracking.start_run(config.experiment, f"evaluate-{config.split}", uri=uri)
    status = "FAILED"
    try:
        tracking.log_params(run_id, to_dict(config), uri)
        env = {"MLFLOW_TRACKING_URI": uri}
        env.update({k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_S3"))})
        trainer = TorchTrainer(
            eval_loop_per_worker,
            train_loop_config={"model": config.model, "data": config.data, "split": config.split,
                               "limit": config.limit, "cpus_per_worker": config.cpus_per_worker},
            scaling_config=ScalingConfig(
                num_workers=config.workers, use_gpu=config.gpu,
                resources_per_worker=worker_resources(config.cpus_per_worker, config.gpu),
            ),
            run_config=RunConfig(
                name=f"evaluate-{run_id}", storage_path=storage_path,
                storage_filesystem=filesystem, worker_runtime_env={"env_vars": env},
            ),
        )  # fmt: skip
        result = trainer.fit().metrics
        values = {k: v for k, v in result.items() if k != "hist" and isinstance(v, int | float)}
        tracking.log_metrics(run_id, values, 0, uri)
        status = "FINISHED"
        return {**values, "hist": np.asarray(result["hist"]), "run_id": run_id}
    finally:
        tracking.end_run(run_id, status, uri)
