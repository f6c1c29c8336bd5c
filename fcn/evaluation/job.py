"""The evaluate job: check everything in the driver, then score a split over Ray Train workers
and log one MLflow evaluation run.

`validate` runs before Ray starts and before any MLflow run exists, so a mistyped path, a
wrong dataset, an unknown model alias or a checkpoint that breaks the contract costs one line
and no cleanup. `run` takes the validated `EvaluateConfig`; the same frozen object goes to
each worker (`eval_loop_per_worker`), which scores its shard with `fcn.evaluation.score.evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections.abc import Iterator

import numpy as np
import torch

from fcn import storage, tracking
from fcn.config import EvaluateConfig, to_dict
from fcn.data.contract import check_split
from fcn.engine import metrics, tiles
from fcn.evaluation.score import evaluate
from fcn.runtime import init_ray, worker_resources
from fcn.storage import absolute
from fcn.tracking.models import load_model


def validate(config: EvaluateConfig) -> EvaluateConfig:
    """The config with local paths absolute, after checking that the split exists with the
    columns evaluation reads and that the model resolves to a checkpoint that keeps the
    contract. Raises FileNotFoundError or ValueError with a one-line message."""
    config = dataclasses.replace(
        config.validate(),
        data=absolute(config.data),
        model=absolute(config.model),
        storage=absolute(config.storage),
    )
    check_split(config.data, config.split)
    # Every worker loads the version the alias names now, even if it moves mid-run.
    pinned, checkpoint_config = tracking.checked_model(config.model)
    if config.tile not in ("auto", "none"):  # one line here, not an error in every worker
        tiles.check_side(checkpoint_config.build_model(), int(config.tile), 1.0, config.tile_margin)
    return dataclasses.replace(config, model=pinned)


def eval_loop_per_worker(loop: dict) -> None:
    """One evaluation worker: its shard of the split, confusion summed over all workers."""
    import ray.train
    import ray.train.torch

    config: EvaluateConfig = loop["config"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    loaded = load_model(config.model, ray.train.torch.get_device())
    scores, hist, _ = evaluate(
        loaded.model, config.data, config.split, loaded.preprocessing, loaded.num_classes,
        rank=rank, world=context.get_world_size(), limit=config.limit,
        tiling=config.tiling(),
    )  # fmt: skip
    metrics_out = {**metrics.named_scores(scores, loaded.classes.names), "hist": hist.tolist()}
    # Ray Train keeps only metrics that come with a checkpoint: rank 0 attaches a tiny one.
    if rank != 0:
        ray.train.report(metrics_out)
        return
    with tempfile.TemporaryDirectory(prefix="fcn-eval-") as directory:  # report uploads it
        with open(os.path.join(directory, "scores.json"), "w") as f:
            json.dump(metrics_out, f)
        ray.train.report(metrics_out, checkpoint=ray.train.Checkpoint.from_directory(directory))


def run(config: EvaluateConfig) -> dict:
    """Evaluate `config.model` on `config.split` over `config.workers` Ray Train workers and log
    an MLflow evaluation run. `config` comes from `validate`. Returns the scores (MLflow metric
    names), `hist` (the summed confusion matrix) and `run_id`."""
    if config.workers:  # 0: Ray Train's local mode scores in this process, no Ray needed
        # A local Ray gets a CPU per worker and one for the driver, even on a smaller machine.
        cpus = int(config.workers * config.cpus_per_worker + 1)
        init_ray(num_cpus=max(os.cpu_count() or 1, cpus))
    uri = tracking.tracking_uri()
    # Tagged with the exact model (registry name and version) and, by log_split_inputs, the
    # digest of the data it scored (`eval_digest`): scores are comparable only on equal data.
    tags = tracking.model_tags(config.model)
    name = f"evaluate-{config.split}"
    with (
        _ray_storage(config) as where,
        tracking.run_scope(config.experiment, name, tags=tags, uri=uri) as run_id,
    ):
        tracking.log_params(run_id, to_dict(config), uri)
        split = {"eval": storage.join(config.data, config.split)}
        tracking.log_split_inputs(run_id, split, {"eval": config.limit}, uri)
        tracking.link_model_input(run_id, config.model, uri)
        result = _trainer(config, run_id, uri, where).fit().metrics
        values = {k: v for k, v in result.items() if k != "hist" and isinstance(v, int | float)}
        tracking.log_metrics(run_id, values, 0, uri)
        return {**values, "hist": np.asarray(result["hist"]), "run_id": run_id}


@contextlib.contextmanager
def _ray_storage(config: EvaluateConfig) -> Iterator[tuple[str, object]]:
    """(storage path, pyarrow filesystem or None) for Ray Train's run files: `--storage`, or
    a temporary folder removed after the run (the scores go to MLflow, not to these files)."""
    if config.storage:
        filesystem, path = None, config.storage
        if storage.is_remote(path):
            filesystem, path = storage.pyarrow_filesystem(path)
        yield path, filesystem
        return
    with tempfile.TemporaryDirectory(prefix="fcn-eval-") as path:
        yield path, None


def _trainer(config: EvaluateConfig, run_id: str, uri: str, where: tuple[str, object]):
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    storage_path, filesystem = where
    # Settings only: credentials reach workers from their node (docs/trust.md).
    env = {**storage.forwarded_env(), **tracking.tracking_env(uri)}
    return TorchTrainer(
        eval_loop_per_worker,
        train_loop_config={"config": config},
        scaling_config=ScalingConfig(
            num_workers=config.workers, use_gpu=config.gpu,
            resources_per_worker=worker_resources(
                config.cpus_per_worker, config.gpu, config.placement_resource
            ),
        ),
        run_config=RunConfig(
            name=f"evaluate-{run_id}", storage_path=storage_path,
            storage_filesystem=filesystem, worker_runtime_env={"env_vars": env},
        ),
    )  # fmt: skip
