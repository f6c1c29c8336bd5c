"""The training driver: `validate` checks a job before Ray starts, `run` trains it with Ray
Train (dataset -> model -> optimizer -> loop -> evaluate -> save, as torchvision's
references/segmentation `main` reads; the worker side is fcn.training.loop).

Layout of a run under `<storage>/<name>/`: Ray Train's `checkpoint_<iteration>/` directories
(the checkpoint contract plus `training_state.pt` for the optimizer and progress), `best/`
(a copy of the best checkpoint by mean IU, what the segment job reads) and `fcn_run.json`
(the MLflow run id, so a resubmitted job with the same name continues the same run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from fcn import storage, tracking
from fcn.config import TrainConfig
from fcn.data.contract import check_split
from fcn.engine import checkpoint, optim
from fcn.engine.classes import ClassList, default_classes
from fcn.runtime import ALLOCATOR_ENV, init_ray, worker_resources
from fcn.storage import absolute
from fcn.training.context import RunContext, TrainHook, TrainSetup, tracking_params
from fcn.training.dataset import (
    WorkerRows,
    balanced_weights,
    check_split_classes,
    check_training_split,
    class_distribution,
    dataset_classes,
    train_source,
)
from fcn.training.init import check_init
from fcn.training.loop import train_loop_per_worker

RUN_FILE = "fcn_run.json"
BEST_DIR = "best"


@dataclass
class TrainResult:
    run_id: str
    best_checkpoint: str  # <storage>/<name>/best: model.pt + config.json
    latest_checkpoint: str | None
    best_mean_iu: float
    metrics: dict
    model_version: str | None
    champion: bool


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


def validate(config: TrainConfig) -> TrainSetup:
    """`resolve`, then every input checked: the splits exist with the columns training reads,
    the train split has rows for every worker, the initial weights exist and load (a models:/
    alias is pinned to its version). The job calls this once, before Ray starts or an MLflow
    run exists, so a problem costs one line (ValueError or FileNotFoundError); `run` takes
    what it returns. Nothing a worker reads is left unchecked: Ray Train's FailureConfig
    restarts workers, and a configuration error would fail every restart the same way.
    """
    config, classes, recipe = resolve(config)
    check_training_split(config, recipe)
    check_split_classes(config, classes)
    check_split(config.data, config.val_split, columns=("image", "mask"))
    config, spec = check_init(config)
    return TrainSetup(config, classes, recipe, spec)


def run(setup: TrainSetup, hook: TrainHook | None = None) -> TrainResult:
    """Train (or resume) run `setup.config.name`; returns where the best checkpoint and the run
    are. `setup` comes from `validate`; `hook` is a test's (see TrainHook), None otherwise.

    Connects to RAY_ADDRESS, or starts a local Ray sized for the workers.
    """
    config, recipe = setup.config, setup.recipe
    init_ray(num_cpus=_local_cpus(config))
    run_dir = storage.join(config.storage, config.name)
    storage.makedirs(run_dir)
    params = {**tracking_params(config, recipe), "preprocessing": setup.spec["name"]}
    previous_handler = _raise_on_sigterm()
    try:
        with _tracked_run(config, run_dir, params) as (run_id, uri):
            tracking.log_classes(run_id, setup.classes.to_dict(), uri)
            splits = {
                "train": [storage.join(config.data, split) for split in config.train_split],
                "val": storage.join(config.data, config.val_split),
            }
            tracking.log_split_inputs(run_id, splits, {"val": config.val_limit}, uri)
            distribution = class_distribution(config)
            context = RunContext(
                run_id, uri, run_dir, setup.spec, setup.classes,
                balanced_weights(config, distribution.pixels), hook,
                class_distribution=distribution.to_dict(),
            )  # fmt: skip
            return _finish(config, context, _fit(config, recipe, context))
    finally:
        if previous_handler is not None:  # None: installed outside Python, leave it
            signal.signal(signal.SIGTERM, previous_handler)


def _local_cpus(config: TrainConfig) -> int:
    """Logical CPUs of a local Ray instance: the workers plus Ray Data's decode tasks, whatever
    the core count (the workers' torch threads are set separately)."""
    needed = config.workers * config.cpus_per_worker + 2
    return max(os.cpu_count() or 1, int(needed + 0.999))


def _read_run_file(run_dir: str) -> dict:
    uri = storage.join(run_dir, RUN_FILE)
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else {}


def _previous_run(run_dir: str, uri: str) -> str | None:
    """The MLflow run this job name used before, to continue; None when none or its store
    lost it."""
    from mlflow.exceptions import MlflowException

    previous = _read_run_file(run_dir).get("run_id")
    if not previous:
        return None
    try:
        status = tracking.client(uri).get_run(previous).info.status
    except MlflowException:
        where = tracking.redact(uri)
        print(f"MLflow run {previous} is not in {where}; starting a new run", flush=True)
        return None
    if status == "RUNNING":
        # Its job died as a whole (no process was left to end it). Marked KILLED first, so
        # its end time records the interruption (MLflow keeps it while the run is continued,
        # until the run ends again). One job per name at a time.
        tracking.end_run(previous, "KILLED", uri)
        print(f"MLflow run {previous} was left RUNNING by a dead job: marked KILLED", flush=True)
    return previous


@contextlib.contextmanager
def _tracked_run(config: TrainConfig, run_dir: str, params: dict) -> Iterator[tuple[str, str]]:
    """(run_id, tracking_uri) of this job name's run, continued or new, its id saved beside
    the checkpoints and its params logged; `tracking.run_scope` ends it however the block
    ends (KILLED on `ray job stop`, FAILED with its reason)."""
    uri = tracking.tracking_uri()
    previous = _previous_run(run_dir, uri)
    tags = {tracking.TAG_STORAGE: tracking.redact(run_dir)}  # a continued run keeps its own
    with tracking.run_scope(config.experiment, config.name, previous, tags, uri) as run_id:
        if previous:
            print(f"continuing MLflow run {run_id}", flush=True)
        storage.write_text(storage.join(run_dir, RUN_FILE), json.dumps({"run_id": run_id}))
        tracking.log_params(run_id, params, uri)
        yield run_id, uri


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

    source = train_source(config, run.spec)
    if isinstance(source, WorkerRows):
        run, datasets = dataclasses.replace(run, train_rows=source), {}
    else:
        datasets = {"train": source}
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
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=list(datasets)),
    )
    return trainer.fit()


def _finish(config: TrainConfig, run: RunContext, result) -> TrainResult:
    """Export and register the best checkpoint of a finished fit."""
    if not result.best_checkpoints:
        raise RuntimeError(f"run {config.name!r} produced no checkpoint")
    best, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["mean_iu"])
    best_uri, export = _export_best(best, run.run_dir)
    try:
        tracking.log_metrics(run.run_id, {"best_mean_iu": best_metrics["best_mean_iu"]},
                             best_metrics["iteration"], run.tracking_uri)  # fmt: skip
        version, champion = None, False
        if config.registered_model:
            version, champion = tracking.register_checkpoint(
                run.run_id, export, config.registered_model, best_metrics["mean_iu"],
                run.tracking_uri,
            )  # fmt: skip
    finally:
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


def _raise_on_sigterm():
    """`ray job stop` sends SIGTERM: raise SystemExit so the run is ended, not left RUNNING."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)
