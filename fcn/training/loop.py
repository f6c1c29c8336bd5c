"""The worker side of a training run: `train_loop_per_worker` (Ray Train calls it in every
data-parallel worker) restores, steps, evaluates, checkpoints and reports.

The step itself (DDP, AMP, accumulation, loss normalisation) is `fcn.engine.step.train_step`,
which runs without Ray; this module adds the micro-batches, restoring, evaluation,
checkpoints and MLflow logging (rank 0).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fcn import tracking
from fcn.config import TrainConfig
from fcn.data.transforms import TrainTransform
from fcn.engine import checkpoint, optim, step
from fcn.engine.metrics import named_scores
from fcn.engine.visualize import sample_panel
from fcn.evaluation.score import evaluate
from fcn.training.context import STATE_FILE, RunContext, tracking_params
from fcn.training.init import build_initial_model
from fcn.training.progress import Throughput

# Worker progress goes through logging, not print: Ray Train patches print() in workers and,
# when another library has wrapped stdout, emits every printed line twice.
log = logging.getLogger("fcn.train")


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    device: torch.device
    # Rank 0's batched MLflow logger (one client, one round trip per flush); None elsewhere.
    logger: tracking.RunLogger | None = None
    system: object | None = None  # --system-metrics: local rank 0's monitor of its node


def _micro_batches(shard, images_per_worker: int, crop_size) -> Iterator[list]:
    """Endless stream of one step's micro-batches [(image, mask), ...]: crops go through as one
    minibatch, whole images (different sizes) one at a time. Each pass over the shard is a new
    epoch (new random crops). Every worker's shard has the same length (equal split), so all
    take the same number of steps and DDP never waits on a worker that ran out."""
    micro = images_per_worker if crop_size else 1
    step_batches = []
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=micro, drop_last=True):
            seen += 1
            step_batches.append((batch["image"], batch["mask"]))
            if len(step_batches) * micro == images_per_worker:
                yield step_batches
                step_batches = []
        if seen == 0:
            raise RuntimeError(
                f"this worker's training shard holds fewer than {micro} images: "
                "use fewer workers or a larger training split"
            )


def _restore(model, rank: int) -> tuple[int, float, dict | None]:
    """(iteration, best mean IU, training state) of Ray Train's checkpoint, loaded into
    `model`; (0, -inf, None) on a fresh start."""
    import ray.train

    restored = ray.train.get_checkpoint()
    if restored is None:
        return 0, float("-inf"), None
    # as_directory: workers on one node share one download (two parallel 1.6 GB GETs
    # stalled the test S3 server past pyarrow's low-speed timeout).
    with restored.as_directory() as directory:
        checkpoint.load_config(directory)  # a clear error if it is not a checkpoint
        # mmap: tensors are read from the file as they are copied in, no second copy.
        load = functools.partial(torch.load, map_location="cpu", weights_only=True, mmap=True)
        model.load_state_dict(load(os.path.join(directory, checkpoint.MODEL_FILE)))
        state = load(os.path.join(directory, STATE_FILE))
    progress = state["progress"]
    if rank == 0:
        log.info(f"restored from checkpoint at iteration {progress['iteration']} ({restored.path})")
    return progress["iteration"], progress["best_mean_iu"], state


def _checkpoint_dir(model, optimizer, scaler, config, recipe, run: RunContext, progress) -> str:
    saved = checkpoint.CheckpointConfig(
        model=config.model,
        num_classes=config.num_classes,
        width=getattr(model, "width", 1.0),
        preprocessing=run.spec,
        classes=run.classes,
        # The reference of segment's drift report (docs/insight.md).
        class_distribution=run.class_distribution or None,
        extra={"train": tracking_params(config, recipe), **progress},
    )
    state = {"optimizer": optimizer.state_dict(), "progress": progress}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    directory = tempfile.mkdtemp(prefix="fcn-ckpt-")
    checkpoint.save(model.state_dict(), saved, directory, extra={STATE_FILE: state})
    return directory


def _log_validation(
    logger: tracking.RunLogger, run: RunContext, iteration: int, scores, samples, extra: dict
) -> None:
    """Rank 0: the scores under the data's class names, and panels in the data's colors."""
    logger.log({**named_scores(scores, run.classes.names), **extra}, iteration)
    palette = run.classes.palette()
    for image_id, image, truth, pred in samples:  # one image series per val image: a slider
        panel = sample_panel(image, truth, pred, palette, run.classes.names)  # with a legend
        logger.log_image(panel, f"val/{image_id}", iteration)
    logger.flush()  # the scores are in MLflow before the checkpoint is reported


def _evaluate_and_report(model, optimizer, scaler, loop: dict, worker: Worker, iteration: int,
                         best_mean_iu: float, reported: dict) -> float:  # fmt: skip
    """Evaluate on val (every worker its shard), log, checkpoint (rank 0) and report to Ray
    Train; returns the new best mean IU."""
    import ray.train

    config, recipe, run = loop["config"], loop["recipe"], loop["run"]
    scores, _, samples = evaluate(
        model, config.data, config.val_split, run.spec, config.num_classes,
        rank=worker.rank, world=worker.world, limit=config.val_limit,
        keep=config.val_images_logged,
    )  # fmt: skip
    best_mean_iu = max(best_mean_iu, scores["mean_iu"])
    progress = {"iteration": iteration, "mean_iu": scores["mean_iu"],
                "best_mean_iu": best_mean_iu, "mlflow_run_id": run.run_id}  # fmt: skip
    reported = {**progress, **reported, "pixel_acc": scores["pixel_acc"]}
    if worker.rank != 0:
        ray.train.report(reported)
        return best_mean_iu
    extra = {"best_mean_iu": best_mean_iu, "images_per_s": reported["images_per_s"]}
    _log_validation(worker.logger, run, iteration, scores, samples, extra)
    log.info(f"iter {iteration} val mean_iu {scores['mean_iu']:.4f} pixel_acc "
             f"{scores['pixel_acc']:.4f} (best {best_mean_iu:.4f})")  # fmt: skip
    directory = _checkpoint_dir(model, optimizer, scaler, config, recipe, run, progress)
    ray.train.report(
        reported,
        checkpoint=ray.train.Checkpoint.from_directory(directory),
        checkpoint_dir_name=f"checkpoint_{iteration:06d}",
    )
    shutil.rmtree(directory, ignore_errors=True)  # uploaded (sync): free the disk
    return best_mean_iu


def _start_worker(config: TrainConfig, run: RunContext) -> Worker:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config.threads or max(1, int(config.cpus_per_worker)))
    torch.manual_seed(config.seed)
    context = ray.train.get_context()
    rank = context.get_world_rank()
    logger = tracking.RunLogger(run.run_id, run.tracking_uri) if rank == 0 else None
    system = None
    if config.system_metrics and context.get_local_rank() == 0:  # one monitor per node
        several = context.get_local_world_size() < context.get_world_size()
        node = f"node_{context.get_node_rank()}" if several else None
        system = tracking.monitor_system(run.run_id, run.tracking_uri, node)
    return Worker(rank, context.get_world_size(), ray.train.torch.get_device(), logger, system)


def train_loop_per_worker(loop: dict) -> None:
    """One data-parallel worker: restore, train to `iterations` steps, evaluating, logging and
    checkpointing every `eval_every`. `loop`: {"config": TrainConfig, "recipe": optim.Recipe,
    "run": RunContext}."""
    config, recipe, run = loop["config"], loop["recipe"], loop["run"]
    worker = _start_worker(config, run)
    model = build_initial_model(config)
    if config.classifier_only:
        optim.freeze_all_but_classifier(model)
    start, best_mean_iu, state = _restore(model, worker.rank)
    ddp, bare = step.prepare(model, worker.device, config.channels_last, ddp=worker.world > 1)
    optimizer, scaler = _optimizer(bare, config, recipe, worker.device, state)
    weights = None
    if run.class_weights is not None:
        weights = torch.tensor(run.class_weights, dtype=torch.float32, device=worker.device)
    per_worker = _images_per_worker(recipe.batch_size, worker)
    batches = _micro_batches(_shard(config, run, worker), per_worker, config.crop_size)
    meter = Throughput(start, per_worker * worker.world, max(1, min(10, config.eval_every // 2)))
    for iteration in range(start + 1, config.iterations + 1):
        if run.hook is not None:
            run.hook.before_step(iteration - 1, worker.rank, worker.world)
        meter.start()
        train_loss = step.train_step(
            ddp, optimizer, next(batches), recipe, class_weights=weights, scaler=scaler,
            amp=config.amp, channels_last=config.channels_last,
            loss_sample=config.loss_sample, stride=bare.coarse_stride,
        )  # fmt: skip
        meter.stop(iteration)
        if worker.logger is not None:
            worker.logger.log({"train_loss": train_loss}, iteration)
            meter.log(iteration, config.iterations, train_loss, optimizer.param_groups[0]["lr"])
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            reported = {"train_loss": train_loss, "images_per_s": meter.images_per_s()}
            best_mean_iu = _evaluate_and_report(bare, optimizer, scaler, loop, worker, iteration,
                                                best_mean_iu, reported)  # fmt: skip
    if worker.system is not None:
        worker.system.finish()  # its last samples, before the driver ends the run


def _shard(config: TrainConfig, run: RunContext, worker: Worker):
    """This worker's training rows: Ray Data's shard, or its share of a small split's rows
    (`--loader`), transformed here."""
    import ray.train

    if run.train_rows is None:
        return ray.train.get_dataset_shard("train")
    transform = TrainTransform(run.spec, config.crop_size, config.flip)
    return run.train_rows.shard(worker.rank, worker.world, transform, config.seed)


def _optimizer(model, config: TrainConfig, recipe: optim.Recipe, device, state: dict | None):
    """(optimizer, AMP grad scaler or None), with their state when the run was restored."""
    optimizer = optim.build_optimizer(model, recipe)
    scaler = step.make_scaler(device, config.amp)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    return optimizer, scaler


def _images_per_worker(batch_size: int, worker: Worker) -> int:
    """The batch split over the workers, at least one image each (said when it rounds)."""
    per_worker = max(1, batch_size // worker.world)
    if worker.rank == 0 and per_worker * worker.world != batch_size:
        log.info(f"batch {batch_size} over {worker.world} workers: "
                 f"{per_worker * worker.world} images per iteration")  # fmt: skip
    return per_worker
