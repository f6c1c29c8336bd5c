"""Data-parallel FCN training on Ray Train: `train_loop_per_worker` and the driver `run`.

Layout of a run under `<storage>/<name>/`: Ray Train's `checkpoint_<iteration>/` directories
(the checkpoint contract plus `training_state.pt` for the optimizer and progress), `best/`
(a copy of the best checkpoint by mean IU, what the segment job reads) and `fcn_run.json`
(the MLflow run id, so a resubmitted job with the same name continues the same run).

The step itself (DDP, AMP, accumulation, loss normalisation) is `fcn.step.train_step`, which
runs without Ray; this module adds the data, restoring, evaluation, checkpoints and MLflow.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from fcn import storage, tracking
from fcn.config import TrainConfig, to_dict
from fcn.data import transforms
from fcn.data.contract import check_split, read_classes, split_files
from fcn.engine import checkpoint, images, optim, step
from fcn.engine.classes import ClassList, default_classes
from fcn.engine.metrics import named_scores
from fcn.engine.models import backbone_of, build_model, preprocess, surgery
from fcn.engine.visualize import sample_panel
from fcn.engine.weights import pytorch_fcn
from fcn.evaluation.score import evaluate
from fcn.nightly import drift
from fcn.runtime import ALLOCATOR_ENV, init_ray, worker_resources
from fcn.storage import absolute
from fcn.tracking.models import check_model, load_model

# Worker progress goes through logging, not print: Ray Train patches print() in workers and,
# when another library has wrapped stdout, emits every printed line twice.
log = logging.getLogger("fcn.train")
WARMUP_STEPS = 2
RUN_FILE = "fcn_run.json"
BEST_DIR = "best"
STATE_FILE = "training_state.pt"
# Test-only: names a module whose `make_hook(run_dir, config)` returns an object with `callbacks`
# (ray.train.UserCallbacks for the controller) and `before_step(iteration, rank, world)`
# (called in every worker before each step). The fault drill of the integration tests uses
# it; production never sets it.
HOOK_ENV = "FCN_TRAIN_HOOK"


@dataclass
class TrainResult:
    run_id: str
    best_checkpoint: str  # <storage>/<name>/best: model.pt + config.json
    latest_checkpoint: str | None
    best_mean_iu: float
    metrics: dict
    model_version: str | None
    champion: bool


@dataclass(frozen=True)
class RunContext:
    """What the driver resolved once for every worker (pickled through Ray with the config)."""

    run_id: str
    tracking_uri: str
    run_dir: str
    spec: dict  # the input preprocessing of the initial weights
    classes: ClassList
    class_weights: tuple[float, ...] | None
    hook: object | None = None  # test-only, see HOOK_ENV
    # The training masks' drift.Distribution.to_dict(), saved in every checkpoint.
    class_distribution: dict | None = None


# --- initialization --------------------------------------------------------------------------


def _is_weights_file(init: str) -> bool:
    return init.endswith((".pth", ".pt", ".pth.tar"))


def _local_file(uri: str) -> str:
    if not storage.is_remote(uri):
        return storage.strip_scheme(uri)
    fd, path = tempfile.mkstemp(suffix=os.path.basename(uri))
    with os.fdopen(fd, "wb") as f:
        f.write(storage.read_bytes(uri))
    return path


def _is_fcn_state(path: str) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("model_state_dict", state) if isinstance(state, dict) else {}
    return any(k.removeprefix("module.") == "score_fr.weight" for k in state)


def initial_preprocessing(config: TrainConfig) -> dict:
    """The input spec of the weights `config.init` starts from (data is normalized with it)."""
    if config.init in (None, "", "imagenet"):
        return preprocess.preprocessing_for(config.model, config.init == "imagenet" or None)
    if _is_weights_file(config.init):
        path = _local_file(config.init)
        if _is_fcn_state(path):
            return preprocess.preprocessing_for(config.model, "pytorch-fcn")
        return preprocess.preprocessing_for(config.model, path)
    return dict(check_model(config.init).preprocessing)


def build_initial_model(config: TrainConfig) -> torch.nn.Module:
    """The model to train, from `config.init`; other architectures transplant (32s -> 16s).
    `config.num_classes` must be resolved (see `resolve`)."""
    options = {"learnable_upsampling": config.learnable_upsampling, "width": config.width}
    init = config.init
    if init in (None, "", "imagenet"):
        return build_model(config.model, config.num_classes, init == "imagenet", **options)
    if _is_weights_file(init):
        path = _local_file(init)
        if not _is_fcn_state(path):  # an ImageNet backbone file
            return build_model(config.model, config.num_classes, path, **options)
        # FCN-8s and at-once weights look alike; a file that does not say which is the model
        # being trained (staging 8s -> 8s-atonce from a bare .pth makes no sense).
        eight = config.model if config.model in ("fcn8s", "fcn8s-atonce") else None
        try:
            source, _spec = pytorch_fcn.import_pytorch_fcn(path)
        except ValueError:
            if eight is None:
                raise
            source, _spec = pytorch_fcn.import_pytorch_fcn(path, name=eight)
    else:
        source = load_model(init).model
        # Staged training keeps the previous stage's width unless told otherwise.
        options["width"] = config.width or getattr(source, "width", 1.0)
    target = build_model(config.model, config.num_classes, **options)
    surgery.transplant(source, target)
    return target


# --- the worker ------------------------------------------------------------------------------


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
    import ray.train

    config, recipe, run = loop["config"], loop["recipe"], loop["run"]
    worker = _start_worker(config, run)
    model = build_initial_model(config)
    if config.classifier_only:
        optim.freeze_all_but_classifier(model)
    start, best_mean_iu, state = _restore(model, worker.rank)
    ddp, bare = step.prepare(model, worker.device, config.channels_last, ddp=worker.world > 1)
    optimizer = optim.build_optimizer(bare, recipe)
    scaler = step.make_scaler(worker.device, config.amp)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    weights = None
    if run.class_weights is not None:
        weights = torch.tensor(run.class_weights, dtype=torch.float32, device=worker.device)
    per_worker = max(1, recipe.batch_size // worker.world)
    if worker.rank == 0 and per_worker * worker.world != recipe.batch_size:
        log.info(f"batch {recipe.batch_size} over {worker.world} workers: "
                 f"{per_worker * worker.world} images per iteration")  # fmt: skip
    batches = _micro_batches(ray.train.get_dataset_shard("train"), per_worker, config.crop_size)
    meter = _Throughput(start, per_worker * worker.world, max(1, min(10, config.eval_every // 2)))
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


class _Throughput:
    """images/s of the steps (input pipeline waits included), leaving out the first steps after
    a (re)start, which build the pipeline and warm the allocator; and the progress line."""

    def __init__(self, start: int, images_per_step: int, print_every: int):
        self.first, self.images_per_step, self.print_every = start, images_per_step, print_every
        self.steps, self.seconds, self.tic = 0, 0.0, 0.0
        self.began = time.perf_counter()
        self.paced: tuple[int, float] | None = None  # (iteration, time) at the first step's end

    def start(self) -> None:
        self.tic = time.perf_counter()

    def stop(self, iteration: int) -> None:
        if self.paced is None:
            self.paced = (iteration, time.perf_counter())
        if iteration - self.first > WARMUP_STEPS:
            self.steps += 1
            self.seconds += time.perf_counter() - self.tic

    def images_per_s(self) -> float:
        return self.steps * self.images_per_step / self.seconds if self.steps else 0.0

    def log(self, iteration: int, iterations: int, train_loss: float, lr: float) -> None:
        if iteration % self.print_every and iteration != iterations:
            return
        log.info(self.line(iteration, iterations, train_loss, lr, time.perf_counter()))

    def line(self, iteration: int, iterations: int, train_loss: float, lr: float, now: float):
        """`iter 6/12 (50%) loss 0.4457 lr 0.0001 3.1 images/s elapsed 0:07 eta 0:07`; the ETA
        is the remaining steps at the mean pace since the first step of this (re)start ended
        (the pipeline and model set-up before it are not a step's cost), evaluations included."""
        elapsed = now - self.began
        start_iteration, start_time = self.paced or (iteration, now)
        done = iteration - start_iteration
        eta = _clock((now - start_time) / done * (iterations - iteration)) if done else "?"
        return (f"iter {iteration}/{iterations} ({100 * iteration // iterations}%) "
                f"loss {train_loss:.4f} lr {lr:.3g} {self.images_per_s():.1f} images/s "
                f"elapsed {_clock(elapsed)} eta {eta}")  # fmt: skip


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# --- the driver ------------------------------------------------------------------------------


def tracking_params(config: TrainConfig, recipe: optim.Recipe) -> dict:
    """Every setting, the preset resolved (what actually trained): MLflow params, config.json."""
    recipe_fields = dataclasses.asdict(recipe)
    return {**to_dict(config), **{f"recipe.{k}": v for k, v in recipe_fields.items()}}


def dataset_classes(data: str) -> ClassList | None:
    """The class list ingest recorded for the dataset at `data`; None for data that records
    none (written by other tools, or before ingest recorded class lists)."""
    try:
        return read_classes(data)
    except (FileNotFoundError, KeyError):
        return None


def resolve(config: TrainConfig) -> tuple[TrainConfig, ClassList, optim.Recipe]:
    """(config with num_classes filled in and local paths absolute, the class list, the
    recipe): the settings' own checks, no data read but the class list (see `validate`)."""
    config.validate()
    config = dataclasses.replace(
        config,
        data=absolute(config.data),
        storage=absolute(config.storage),
        init=absolute(config.init) if config.init and config.init != "imagenet" else config.init,
    )
    recipe = optim.recipe(config)
    classes = dataset_classes(config.data)
    if classes is None:
        classes = default_classes(config.num_classes or 21)
    elif config.num_classes not in (None, classes.num_classes):
        raise ValueError(
            f"--num-classes {config.num_classes} disagrees with the dataset's "
            f"{classes.num_classes} classes ({', '.join(classes.names)}); leave it out"
        )
    return dataclasses.replace(config, num_classes=classes.num_classes), classes, recipe


def validate(config: TrainConfig) -> tuple[TrainConfig, ClassList, optim.Recipe]:
    """`resolve`, then every input checked: the splits exist with the columns training reads,
    the train split has rows for every worker, the initial weights exist (a models:/ alias is
    pinned to its version). The driver calls this before Ray starts or an MLflow run exists,
    so a problem costs one line (ValueError or FileNotFoundError). Nothing a worker reads is
    left unchecked: Ray Train's FailureConfig restarts workers, and a configuration error
    would fail every restart the same way.
    """
    config, classes, recipe = resolve(config)
    _check_training_split(config, recipe)
    _check_split_classes(config, classes)
    check_split(config.data, config.val_split, columns=("image", "mask"))
    return _check_init(config), classes, recipe


def _check_training_split(config: TrainConfig, recipe: optim.Recipe) -> None:
    """The train splits have the columns training reads and rows enough for one step on every
    worker (a worker with an empty shard would fail, and be retried, in every attempt)."""
    import pyarrow.parquet as pq

    rows = 0
    for split in config.train_split:
        for uri in check_split(config.data, split, columns=("image", "mask")):
            fs, path = storage.pyarrow_filesystem(uri)
            rows += pq.read_metadata(fs.open_input_file(path)).num_rows
    per_worker = max(1, recipe.batch_size // config.workers) if config.crop_size else 1
    if rows < config.workers * per_worker:
        raise ValueError(
            f"--train-split {' '.join(config.train_split)} of {config.data} holds {rows} rows, "
            f"fewer than {config.workers * per_worker} ({config.workers} workers x {per_worker} "
            "images per step): use fewer --workers or a smaller --batch-size"
        )


def _check_split_classes(config: TrainConfig, classes: ClassList) -> None:
    """A split ingested as its own dataset under --data (`labeled-2026-11-27/default`, the
    dataset `labeled-2026-11-27/`) must have been checked against the same class list: its
    mask values would mean other classes."""
    for split in config.train_split:
        if "/" not in split:
            continue
        root = storage.join(config.data, split.rsplit("/", 1)[0])
        own = dataset_classes(root)  # None: not a dataset of its own
        if own is not None and own != classes:
            raise ValueError(
                f"split {split!r} was ingested with classes {', '.join(own.names)}, the data "
                f"at {config.data} with {', '.join(classes.names)}: ingest it with the same "
                "--classes file"
            )


def _check_init(config: TrainConfig) -> TrainConfig:
    """The config with `init` pinned (a models:/ alias -> its version, so every worker and
    every restart loads the same weights), after checking that the weights exist."""
    init = config.init
    if init in (None, ""):
        return config
    if init == "imagenet":
        try:
            surgery.find_backbone_weights(backbone_of(config.model))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--init imagenet: {err}") from None
    elif _is_weights_file(init):
        if not storage.exists(init):
            raise FileNotFoundError(f"--init {init}: no such weights file")
        try:  # reads the file as the workers will: a corrupt one fails here, once
            initial_preprocessing(config)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # torch's unpickling and zip errors, many lines each
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"--init {init}: not a weights file torch can load ({type(err).__name__}: {reason})"
            ) from None
    else:
        check_model(init)
        return dataclasses.replace(config, init=tracking.pin_model_uri(init))
    return config


def train_dataset(config: TrainConfig, spec: dict):
    """The union of the train splits as one Ray Dataset of transformed crops."""
    import ray.data

    fs, _ = storage.pyarrow_filesystem(config.data)
    paths = []
    for split in config.train_split:
        split_files(config.data, split)  # a clear error when the split is missing
        paths.append(storage.pyarrow_filesystem(storage.join(config.data, split))[1])
    # The split is executed once per epoch: its plan would be logged anew every epoch.
    ray.data.DataContext.get_current().print_on_execution_start = False
    # select_columns is pushed down into the Parquet read: other columns are never fetched.
    dataset = ray.data.read_parquet(paths, filesystem=fs).select_columns(["image", "mask"])
    if config.cache_reads:
        # Every epoch re-executes the pipeline; without this each one starts with the Parquet
        # reads again (~5 s per epoch on 2 cores, however small the split). The encoded bytes
        # are what is kept (spilled to disk if they do not fit); decoding and the random
        # crops and flips still run anew every epoch.
        dataset = dataset.materialize()
    return dataset.map_batches(
        transform_batch,
        fn_kwargs={"spec": spec, "crop_size": config.crop_size, "flip": config.flip},
        batch_size=8,
        batch_format="numpy",
    )


def transform_batch(batch: dict, spec: dict, crop_size, flip: bool) -> dict:
    """Ray Data task: a fresh unseeded generator per call, so every epoch gets new crops."""
    labeled = [i for i, m in enumerate(batch["mask"]) if m is not None]
    batch = {k: [batch[k][i] for i in labeled] for k in ("image", "mask")}
    return transforms.TrainTransform(spec, crop_size, flip)(batch)


def class_distribution(config: TrainConfig) -> drift.Distribution:
    """Class pixel counts and the number of images each class appears in, over the training
    masks (one pass on the driver, the mask column only): the class weights come from it, and
    every checkpoint records it as the reference of segment's drift report."""
    import pyarrow.parquet as pq

    def masks():
        for split in config.train_split:
            for uri in split_files(config.data, split):
                fs, path = storage.pyarrow_filesystem(uri)
                column = pq.read_table(path, filesystem=fs, columns=["mask"]).column("mask")
                yield from (images.decode_mask(c) for c in column.to_pylist() if c is not None)

    return drift.of_masks(masks(), config.num_classes)


def balanced_weights(config: TrainConfig, pixels: np.ndarray) -> tuple[float, ...] | None:
    """Class weights from the training masks' class pixel counts: median frequency balancing,
    or its square root (`balanced-sqrt`); None for `none`."""
    if config.class_weights == "none":
        return None
    power = 0.5 if config.class_weights == "balanced-sqrt" else 1.0
    return tuple(optim.median_frequency_weights(pixels, power))


def _read_run_file(run_dir: str) -> dict:
    uri = storage.join(run_dir, RUN_FILE)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def _start_tracking(config: TrainConfig, run_dir: str, params: dict) -> tuple[str, str]:
    """(run_id, tracking_uri): the run this job name used before, or a new one."""
    from mlflow.exceptions import MlflowException

    uri = tracking.tracking_uri()
    previous = _read_run_file(run_dir).get("run_id")
    run_id = None
    if previous:
        try:
            # Still RUNNING: its job died as a whole (no process was left to end it). Marked
            # KILLED first, so its end time records the interruption (MLflow keeps it while
            # the run is continued, until the run ends again). One job per name at a time.
            if tracking.client(uri).get_run(previous).info.status == "RUNNING":
                tracking.end_run(previous, "KILLED", uri)
                print(
                    f"MLflow run {previous} was left RUNNING by a dead job: marked KILLED",
                    flush=True,
                )
            run_id = tracking.start_run(config.experiment, config.name, previous, uri=uri)
            print(f"continuing MLflow run {run_id}", flush=True)
        except MlflowException:
            where = tracking.redact(uri)
            print(f"MLflow run {previous} is not in {where}; starting a new run", flush=True)
    if run_id is None:
        tags = {tracking.TAG_STORAGE: tracking.redact(run_dir)}
        run_id = tracking.start_run(config.experiment, config.name, tags=tags, uri=uri)
    storage.write_text(storage.join(run_dir, RUN_FILE), json.dumps({"run_id": run_id}))
    tracking.log_params(run_id, params, uri)
    return run_id, uri


def _run_config(config: TrainConfig, env: dict, callbacks: list):
    import ray.train

    run_dir_fs = None
    storage_path = storage.strip_scheme(config.storage)
    if storage.is_remote(config.storage):
        run_dir_fs, storage_path = storage.pyarrow_filesystem(config.storage)
    return ray.train.RunConfig(
        name=config.name,
        storage_path=storage_path,
        storage_filesystem=run_dir_fs,
        failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
        # The best two by mean IU; Ray Train always keeps the latest too (for resuming).
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="mean_iu", checkpoint_score_order="max"
        ),
        worker_runtime_env={"env_vars": env},
        callbacks=callbacks,
    )


def _worker_env(tracking_uri: str) -> dict:
    """Settings only: credentials reach workers from their node (docs/trust.md)."""
    return {**ALLOCATOR_ENV, **storage.forwarded_env(), **tracking.tracking_env(tracking_uri)}


def _test_hook(run_dir: str, config: TrainConfig):
    """The test-only hook HOOK_ENV names (None in production)."""
    name = os.environ.get(HOOK_ENV)
    return importlib.import_module(name).make_hook(run_dir, config) if name else None


def _export_best(best, run_dir: str) -> tuple[str, str]:
    """Copy the best checkpoint's model.pt and config.json (config.json last: it marks the copy
    complete) to `<run_dir>/best` and to a local dir for MLflow; the optimizer state stays."""
    source = storage.locate(run_dir).uri_of(best.path)
    target = storage.join(run_dir, BEST_DIR)
    export = tempfile.mkdtemp(prefix="fcn-register-")
    storage.makedirs(target)
    for name in (checkpoint.MODEL_FILE, checkpoint.CONFIG_FILE):
        data = storage.read_bytes(storage.join(source, name))
        storage.write_bytes(storage.join(target, name), data)
        with open(os.path.join(export, name), "wb") as f:
            f.write(data)
    return target, export


def _fit(config: TrainConfig, recipe: optim.Recipe, run: RunContext):
    """Ray Train's result of the whole (possibly restarted) run."""
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": config, "recipe": recipe, "run": run},
        scaling_config=ScalingConfig(
            num_workers=config.workers,
            use_gpu=config.gpu,
            resources_per_worker=worker_resources(
                config.cpus_per_worker, config.gpu, config.placement_resource
            ),
        ),
        run_config=_run_config(
            config, _worker_env(run.tracking_uri), run.hook.callbacks if run.hook else []
        ),
        datasets={"train": train_dataset(config, run.spec)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    return trainer.fit()


def _finish(config: TrainConfig, run: RunContext, result) -> TrainResult:
    """Export and register the best checkpoint of a finished fit."""
    if not result.best_checkpoints:
        raise RuntimeError(f"run {config.name!r} produced no checkpoint")
    best, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["mean_iu"])
    best_uri, export = _export_best(best, run.run_dir)
    tracking.log_metrics(run.run_id, {"best_mean_iu": best_metrics["best_mean_iu"]},
                         best_metrics["iteration"], run.tracking_uri)  # fmt: skip
    version, champion = None, False
    if config.registered_model:
        version, champion = tracking.register_checkpoint(
            run.run_id, export, config.registered_model, best_metrics["mean_iu"], run.tracking_uri
        )
    shutil.rmtree(export, ignore_errors=True)
    latest = result.checkpoint
    return TrainResult(
        run_id=run.run_id,
        best_checkpoint=best_uri,
        latest_checkpoint=storage.locate(config.storage).uri_of(latest.path) if latest else None,
        best_mean_iu=float(best_metrics["mean_iu"]),
        metrics=dict(result.metrics or {}),
        model_version=version,
        champion=champion,
    )


def run(config: TrainConfig) -> TrainResult:
    """Train (or resume) run `config.name`; returns where the best checkpoint and the run are.

    Needs a Ray connection (`ray.init()` is called when none is open: RAY_ADDRESS or local).
    """
    config, classes, recipe = validate(config)
    init_ray()
    spec = initial_preprocessing(config)
    run_dir = storage.join(config.storage, config.name)
    storage.makedirs(run_dir)
    params = {**tracking_params(config, recipe), "preprocessing": spec["name"]}
    run_id, uri = _start_tracking(config, run_dir, params)
    tracking.log_classes(run_id, classes.to_dict(), uri)
    splits = {
        "train": [storage.join(config.data, split) for split in config.train_split],
        "val": storage.join(config.data, config.val_split),
    }
    tracking.log_split_inputs(run_id, splits, {"val": config.val_limit}, uri)
    previous_handler = _raise_on_sigterm()
    status = "FAILED"
    try:
        distribution = class_distribution(config)
        context = RunContext(
            run_id, uri, run_dir, spec, classes, balanced_weights(config, distribution.pixels),
            _test_hook(run_dir, config), class_distribution=distribution.to_dict(),
        )  # fmt: skip
        result = _finish(config, context, _fit(config, recipe, context))
        status = "FINISHED"
        return result
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        tracking.end_run(run_id, status, uri)
        if previous_handler is not None:  # None: installed outside Python, leave it
            signal.signal(signal.SIGTERM, previous_handler)


def _raise_on_sigterm():
    """`ray job stop` sends SIGTERM: raise SystemExit so the run is ended, not left RUNNING."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)
