"""Data-parallel FCN training on Ray Train: `train_loop_per_worker` and the driver `run`.

Layout of a run under `<storage>/<name>/`: Ray Train's `checkpoint_<iteration>/` directories
(the checkpoint contract plus `training_state.pt` for the optimizer and progress), `best/`
(a copy of the best checkpoint by mean IU, what the segment job reads) and `fcn_run.json`
(the MLflow run id, so a resubmitted job with the same name continues the same run).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from fcn import checkpoint, images, optim, storage, tracking
from fcn.config import TrainConfig, from_dict, to_dict
from fcn.data import transforms
from fcn.data.classes import default_classes
from fcn.evaluate import evaluate, split_files, worker_resources
from fcn.metrics import named_scores
from fcn.models import build_from_config, build_model, preprocess
from fcn.runtime import ALLOCATOR_ENV, init_ray
from fcn.visualize import png_bytes, sample_panel

# Worker progress goes through logging, not print: Ray Train patches print() in workers and,
# when another library has wrapped stdout, emits every printed line twice.
log = logging.getLogger("fcn.train")
WARMUP_STEPS = 2
RUN_FILE = "fcn_run.json"
BEST_DIR = "best"
STATE_FILE = "training_state.pt"
# Fault injection for tests and drills: the last worker exits at this iteration, once per
# run (a marker object in the run directory makes it happen only once).
FAULT_ENV = "FCN_FAULT_AT_ITERATION"
FAULT_MARKER = "_fault_injected"


@dataclass
class TrainResult:
    run_id: str
    best_checkpoint: str  # <storage>/<name>/best: model.pt + config.json
    latest_checkpoint: str | None
    best_mean_iu: float
    metrics: dict
    model_version: str | None
    champion: bool


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
    return checkpoint.load_config(tracking.resolve_checkpoint(config.init))["preprocessing"]


def build_initial_model(config: TrainConfig) -> torch.nn.Module:
    """The model to train, from `config.init`; other architectures transplant (32s -> 16s)."""
    from fcn.models import surgery

    options = {"learnable_upsampling": config.learnable_upsampling, "width": config.width}
    init = config.init
    if init in (None, "", "imagenet"):
        return build_model(config.model, config.num_classes, init == "imagenet", **options)
    if _is_weights_file(init):
        path = _local_file(init)
        if not _is_fcn_state(path):  # an ImageNet backbone file
            return build_model(config.model, config.num_classes, path, **options)
        source, spec = surgery.import_pytorch_fcn(path)
    else:
        state, saved = checkpoint.load(tracking.resolve_checkpoint(init))
        source = build_from_config(saved)
        source.load_state_dict(state, strict=True)
        spec = saved["preprocessing"]
        # Staged training keeps the previous stage's width unless told otherwise.
        options["width"] = config.width or getattr(source, "width", 1.0)
    target = build_model(config.model, config.num_classes, **options)
    surgery.transplant(source, target)
    target.preprocessing = spec
    return target


# --- the worker ------------------------------------------------------------------------------


def _inject_fault(run_dir: str, iteration: int, rank: int, world: int, eval_every: int) -> None:
    at = os.environ.get(FAULT_ENV)
    if not at or int(at) != iteration or rank != world - 1 or world < 2:
        return
    marker = storage.join(run_dir, FAULT_MARKER)
    if storage.exists(marker):
        return
    # The drill is "lose a worker after a checkpoint": wait until Ray Train's controller has
    # registered the last one (its snapshot names it); a few fast steps may not be enough.
    last = f"checkpoint_{iteration // eval_every * eval_every:06d}"
    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and iteration >= eval_every:
        if storage.exists(snapshot) and last in storage.read_text(snapshot):
            break
        time.sleep(0.5)
    storage.write_text(marker, f"worker {rank} exited at iteration {iteration}\n")
    log.info(f"[fault injection] worker {rank} exits at iteration {iteration}")
    os._exit(1)


def _batches(shard, micro_batch: int):
    """Endless stream of (image, mask) batches; each pass over the shard is a new epoch (new
    random crops). Every worker's shard has the same length (equal split), so all take the
    same number of steps and DDP never waits on a worker that ran out."""
    while True:
        seen = 0
        for batch in shard.iter_torch_batches(batch_size=micro_batch, drop_last=True):
            seen += 1
            yield batch["image"], batch["mask"]
        if seen == 0:
            raise RuntimeError(
                f"this worker's training shard holds fewer than {micro_batch} images: "
                "use fewer workers or a larger training split"
            )


def _checkpoint_dir(model, optimizer, scaler, loop: dict, progress: dict) -> str:
    config: TrainConfig = from_dict(TrainConfig, loop["config"])
    saved = {
        "model": config.model,
        "num_classes": config.num_classes,
        "width": getattr(model, "width", 1.0),
        "preprocessing": loop["spec"],
        "classes": default_classes(config.num_classes).to_dict(),
        "train": tracking_params(config, loop["recipe"]),
        **progress,
    }
    state = {"optimizer": optimizer.state_dict(), "progress": progress}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    directory = tempfile.mkdtemp(prefix="fcn-ckpt-")
    checkpoint.save(model.state_dict(), saved, directory, extra={STATE_FILE: state})
    return directory


def train_loop_per_worker(loop: dict) -> None:
    """One data-parallel worker: restore, train `iterations` steps, evaluate and checkpoint."""
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    config: TrainConfig = from_dict(TrainConfig, loop["config"])
    recipe = optim.Recipe(**loop["recipe"])
    spec, run_id, uri = loop["spec"], loop["run_id"], loop["tracking_uri"]
    torch.set_num_threads(config.threads or max(1, int(config.cpus_per_worker)))
    torch.manual_seed(config.seed)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    model = build_initial_model(config)
    if config.classifier_only:
        optim.freeze_all_but_classifier(model)
    start, best_mean_iu, optimizer_state, scaler_state = 0, float("-inf"), None, None
    restored = ray.train.get_checkpoint()
    if restored is not None:
        # as_directory: workers on one node share one download (two parallel 1.6 GB GETs
        # stalled the test S3 server past pyarrow's low-speed timeout).
        with restored.as_directory() as directory:
            checkpoint.load_config(directory)  # a clear error if it is not a checkpoint
            # mmap: tensors are read from the file as they are copied in, no second copy.
            load = functools.partial(torch.load, map_location="cpu", weights_only=True, mmap=True)
            model.load_state_dict(load(os.path.join(directory, checkpoint.MODEL_FILE)))
            state = load(os.path.join(directory, STATE_FILE))
            optimizer_state, scaler_state = state["optimizer"], state.get("scaler")
        start, best_mean_iu = state["progress"]["iteration"], state["progress"]["best_mean_iu"]
        if rank == 0:
            log.info(f"restored from checkpoint at iteration {start} ({restored.path})")

    model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Gradients as views into DDP's buckets: one copy of the gradients, not two (~0.5 GB).
    ddp = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs={"gradient_as_bucket_view": True}
    )
    bare = ddp.module if hasattr(ddp, "module") else ddp
    optimizer = optim.build_optimizer(bare, recipe)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    use_amp = device.type == "cuda" and config.amp != "none"
    amp_dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and config.amp == "fp16" else None
    if scaler is not None and scaler_state is not None:
        scaler.load_state_dict(scaler_state)
    weights = loop.get("class_weights")
    weights = torch.tensor(weights, dtype=torch.float32, device=device) if weights else None

    per_worker = max(1, recipe.batch_size // world)
    micro = per_worker if config.crop_size else 1  # whole images differ in size: one at a time
    accumulate = per_worker // micro
    stream = _batches(ray.train.get_dataset_shard("train"), micro)
    stride = getattr(getattr(bare, "final", None), "stride", 32)  # final score map's stride
    if rank == 0 and per_worker * world != recipe.batch_size:
        log.info(f"batch {recipe.batch_size} over {world} workers: {per_worker * world} images "
                 "per iteration")  # fmt: skip
    print_every = max(1, min(10, config.eval_every // 2))
    iteration, tic = start, time.perf_counter()
    # Throughput of the steps (input pipeline waits included), leaving out the first steps
    # after a (re)start, which build the pipeline and warm the allocator.
    timed_steps, timed_seconds = 0, 0.0
    while iteration < config.iterations:
        _inject_fault(loop["run_dir"], iteration, rank, world, config.eval_every)
        step_start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for k in range(accumulate):
            image, mask = next(stream)
            image, mask = image.to(device), mask.to(device).long()
            if config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            mask = optim.sample_loss_cells(mask, config.loss_sample, cell=stride)
            sync = k == accumulate - 1 or not hasattr(ddp, "no_sync")
            with (
                ddp.no_sync() if not sync else contextlib.nullcontext(),
                torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp),
            ):
                logits = ddp(image)
                loss = optim.pixel_loss(logits, mask, recipe.loss, weights)
                # DDP averages gradients over workers: a mean stays the global mean, a sum
                # is scaled back up to the sum over every worker's images.
                loss = loss / accumulate if recipe.loss == "mean" else loss * world
            (scaler.scale(loss) if scaler else loss).backward()
            total += loss.detach() if recipe.loss == "mean" else loss.detach() / world
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        iteration += 1
        if iteration - start > WARMUP_STEPS:
            timed_steps += 1
            timed_seconds += time.perf_counter() - step_start
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
            total /= world
        train_loss = float(total)
        if rank == 0:
            tracking.log_metrics(run_id, {"train_loss": train_loss}, iteration, uri)
            if iteration % print_every == 0 or iteration == config.iterations:
                seconds = (time.perf_counter() - tic) / print_every
                log.info(f"iter {iteration}/{config.iterations} train_loss {train_loss:.4f} "
                         f"({seconds:.2f} s/iter)")  # fmt: skip
                tic = time.perf_counter()
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            scores, _, samples = evaluate(
                bare, config.data, config.val_split, spec, config.num_classes, device,
                rank=rank, world=world, limit=config.val_limit,
                channels_last=config.channels_last, keep=config.val_images_logged,
            )  # fmt: skip
            best_mean_iu = max(best_mean_iu, scores["mean_iu"])
            progress = {"iteration": iteration, "mean_iu": scores["mean_iu"],
                        "best_mean_iu": best_mean_iu, "mlflow_run_id": run_id}  # fmt: skip
            speed = timed_steps * per_worker * world / timed_seconds if timed_steps else 0.0
            reported = {**progress, "train_loss": train_loss, "pixel_acc": scores["pixel_acc"],
                        "images_per_s": speed}  # fmt: skip
            if rank != 0:
                ray.train.report(reported)
                continue
            classes = default_classes(config.num_classes)
            values = named_scores(scores, classes.names)
            values.update(best_mean_iu=best_mean_iu, images_per_s=speed)
            tracking.log_metrics(run_id, values, iteration, uri)
            for image_id, image, truth, pred in samples:
                panel = png_bytes(sample_panel(image, truth, pred, classes.palette()))
                name = f"val_images/{image_id}_iter{iteration:06d}.png"
                tracking.log_image(run_id, panel, name, uri)
            log.info(f"iter {iteration} val mean_iu {scores['mean_iu']:.4f} pixel_acc "
                     f"{scores['pixel_acc']:.4f} (best {best_mean_iu:.4f})")  # fmt: skip
            directory = _checkpoint_dir(bare, optimizer, scaler, loop, progress)
            ray.train.report(
                reported,
                checkpoint=ray.train.Checkpoint.from_directory(directory),
                checkpoint_dir_name=f"checkpoint_{iteration:06d}",
            )
            shutil.rmtree(directory, ignore_errors=True)  # uploaded (sync): free the disk


# --- the driver ------------------------------------------------------------------------------


def tracking_params(config: TrainConfig, recipe: dict) -> dict:
    """Every setting, the preset resolved (what actually trained): MLflow params, config.json."""
    return {**to_dict(config), **{f"recipe.{k}": v for k, v in recipe.items()}}


def train_dataset(config: TrainConfig, spec: dict):
    import ray.data

    fs, path = storage.pyarrow_filesystem(storage.join(config.data, config.train_split))
    split_files(config.data, config.train_split)  # a clear error when the split is missing
    # The split is executed once per epoch: its plan would be logged anew every epoch.
    ray.data.DataContext.get_current().print_on_execution_start = False
    # select_columns is pushed down into the Parquet read: other columns are never fetched.
    dataset = ray.data.read_parquet(path, filesystem=fs).select_columns(["image", "mask"])
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


def balanced_weights(config: TrainConfig) -> list[float] | None:
    """Class weights from the training masks' pixel counts (one pass on the driver): median
    frequency balancing, or its square root (`balanced-sqrt`); None for `none`."""
    if config.class_weights == "none":
        return None
    import pyarrow.parquet as pq

    counts = np.zeros(config.num_classes, dtype=np.int64)
    for uri in split_files(config.data, config.train_split):
        fs, path = storage.pyarrow_filesystem(uri)
        for cell in pq.read_table(path, filesystem=fs, columns=["mask"]).column("mask").to_pylist():
            if cell is not None:
                mask = images.decode_mask(cell)
                counts += np.bincount(mask[mask < config.num_classes], minlength=config.num_classes)
    power = 0.5 if config.class_weights == "balanced-sqrt" else 1.0
    return optim.median_frequency_weights(counts, power)


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
            run_id = tracking.start_run(config.experiment, config.name, previous, uri=uri)
            print(f"continuing MLflow run {run_id}", flush=True)
        except MlflowException:
            print(f"MLflow run {previous} is not in {uri}; starting a new run", flush=True)
    if run_id is None:
        tags = {tracking.TAG_STORAGE: tracking.redact(run_dir)}
        run_id = tracking.start_run(config.experiment, config.name, tags=tags, uri=uri)
    storage.write_text(storage.join(run_dir, RUN_FILE), json.dumps({"run_id": run_id}))
    tracking.log_params(run_id, params, uri)
    return run_id, uri


def _run_config(config: TrainConfig, env: dict):
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
    )


def _worker_env(tracking_uri: str) -> dict:
    passed = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
              "MLFLOW_S3_ENDPOINT_URL", FAULT_ENV)  # fmt: skip
    env = {k: os.environ[k] for k in passed if k in os.environ}
    return {**ALLOCATOR_ENV, **env, "MLFLOW_TRACKING_URI": tracking_uri}


def _export_best(best, run_dir: str) -> tuple[str, str]:
    """Copy the best checkpoint's model.pt and config.json (config.json last: it marks the copy
    complete) to `<run_dir>/best` and to a local dir for MLflow; the optimizer state stays."""
    source = _with_scheme(run_dir, best.path)
    target = storage.join(run_dir, BEST_DIR)
    export = tempfile.mkdtemp(prefix="fcn-register-")
    storage.makedirs(target)
    for name in (checkpoint.MODEL_FILE, checkpoint.CONFIG_FILE):
        data = storage.read_bytes(storage.join(source, name))
        storage.write_bytes(storage.join(target, name), data)
        with open(os.path.join(export, name), "wb") as f:
            f.write(data)
    return target, export


def run(config: TrainConfig) -> TrainResult:
    """Train (or resume) run `config.name`; returns where the best checkpoint and the run are.

    Needs a Ray connection (`ray.init()` is called when none is open: RAY_ADDRESS or local).
    """
    from ray.train import DataConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if config.iterations < 1 or config.eval_every < 1 or config.workers < 1:
        raise ValueError("iterations, eval_every and workers must be >= 1")
    init_ray()
    recipe = optim.recipe(config)
    spec = initial_preprocessing(config)
    run_dir = storage.join(config.storage, config.name)
    storage.makedirs(run_dir)
    params = {**tracking_params(config, recipe.__dict__), "preprocessing": spec["name"]}
    run_id, uri = _start_tracking(config, run_dir, params)
    previous_handler = _raise_on_sigterm()
    status = "FAILED"
    try:
        loop = {
            "config": to_dict(config),
            "recipe": dict(recipe.__dict__),
            "spec": spec,
            "run_id": run_id,
            "tracking_uri": uri,
            "run_dir": run_dir,
            "class_weights": balanced_weights(config),
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop,
            scaling_config=ScalingConfig(
                num_workers=config.workers,
                use_gpu=config.gpu,
                resources_per_worker=worker_resources(config.cpus_per_worker, config.gpu),
            ),
            run_config=_run_config(config, _worker_env(uri)),
            datasets={"train": train_dataset(config, spec)},
            dataset_config=DataConfig(datasets_to_split=["train"]),
        )
        result = trainer.fit()
        if not result.best_checkpoints:
            raise RuntimeError(f"run {config.name!r} produced no checkpoint")
        best, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["mean_iu"])
        best_uri, export = _export_best(best, run_dir)
        tracking.log_metrics(run_id, {"best_mean_iu": best_metrics["best_mean_iu"]},
                             best_metrics["iteration"], uri)  # fmt: skip
        version, champion = None, False
        if config.registered_model:
            version, champion = tracking.register_checkpoint(
                run_id, export, config.registered_model, best_metrics["mean_iu"], uri
            )
        shutil.rmtree(export, ignore_errors=True)
        status = "FINISHED"
        return TrainResult(
            run_id=run_id,
            best_checkpoint=best_uri,
            latest_checkpoint=_with_scheme(config.storage, result.checkpoint.path)
            if result.checkpoint else None,
            best_mean_iu=float(best_metrics["mean_iu"]),
            metrics=dict(result.metrics or {}),
            model_version=version,
            champion=champion,
        )  # fmt: skip
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        tracking.end_run(run_id, status, uri)
        if previous_handler is not None:  # None: installed outside Python, leave it
            signal.signal(signal.SIGTERM, previous_handler)


def _with_scheme(like: str, path: str) -> str:
    return f"{storage.scheme(like)}://{path}" if storage.is_remote(like) else path


def _raise_on_sigterm():
    """`ray job stop` sends SIGTERM: raise SystemExit so the run is ended, not left RUNNING."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)
