"""The training data: the train splits as one Ray Dataset of transformed crops (or, when small,
as rows each worker transforms itself), their class distribution and the class weights from
it, and the checks of the splits the driver runs before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fcn import storage
from fcn.config import TrainConfig
from fcn.data import transforms
from fcn.data.contract import check_split, read_classes, split_file_infos, split_files
from fcn.data.distribution import Distribution, of_masks
from fcn.engine import images, optim
from fcn.engine.classes import ClassList

# A cached split this small is read by the driver and handed to Ray Data as tables: Ray Data's
# own read (a job of read tasks, their worker processes started) cost ~10 s on 2 cores however
# small the split, and gives the same rows in the object store (docs/environment.md).
DRIVER_READ_BYTES = 256 << 20
BLOCK_ROWS = 32
# A cached split this small is decoded and cropped by the training workers themselves
# (--loader auto): Ray Data's pipeline (a dataset manager, a split coordinator and task
# workers, each a process that starts and imports Ray) cost ~7 s before the first step on 2
# quiet cores, twice that on a loaded machine: more than such a split's decoding costs.
WORKER_READ_BYTES = 64 << 20


@dataclass(frozen=True)
class WorkerRows:
    """The labeled rows of a small train split in Ray's object store (`--loader worker`):
    every worker takes its share of them and decodes, crops and flips it itself."""

    table: object  # ray.ObjectRef of a pyarrow.Table with `image` and `mask` columns
    rows: int

    def shard(self, rank: int, world: int, transform, seed: int) -> WorkerShard:
        import ray

        return WorkerShard(ray.get(self.table), rank, world, transform, seed)


class WorkerShard:
    """One worker's equal share of WorkerRows, iterated as Ray Train's dataset shard is
    (`iter_torch_batches`). Each pass is an epoch: the rows in a new order (one permutation per
    epoch, the same on every worker, each taking its own slice, so the shares never overlap),
    with new crops and flips."""

    def __init__(self, table, rank: int, world: int, transform, seed: int):
        self.table, self.rank, self.transform = table, rank, transform
        self.share = table.num_rows // world  # equal shares: every worker steps as often
        self.seed, self.epoch = seed, 0

    def iter_torch_batches(self, batch_size: int, drop_last: bool = True):
        import torch

        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.table.num_rows)
        self.epoch += 1
        mine = order[self.rank * self.share : (self.rank + 1) * self.share]
        stop = len(mine) - batch_size + 1 if drop_last else len(mine)
        for start in range(0, max(stop, 0), batch_size):
            rows = self.table.take(mine[start : start + batch_size])
            batch = self.transform(
                {"image": rows.column("image").to_pylist(), "mask": rows.column("mask").to_pylist()}
            )
            yield {key: torch.as_tensor(np.asarray(value)) for key, value in batch.items()}


def train_source(config: TrainConfig, spec: dict):
    """What the workers train on: WorkerRows (`--loader worker`, or `auto` with a cached split
    of at most WORKER_READ_BYTES), else the Ray Dataset of `train_dataset`."""
    files = [f for split in config.train_split for f in split_file_infos(config.data, split)]
    small = config.cache_reads and sum(f.size for f in files) <= WORKER_READ_BYTES
    if config.loader == "ray-data" or (config.loader == "auto" and not small):
        return train_dataset(config, spec, files)
    import pyarrow.compute as pc
    import ray

    fs, _ = storage.pyarrow_filesystem(config.data)
    table = _read_in_driver([storage.strip_scheme(f.uri) for f in files], fs)
    table = table.filter(pc.is_valid(table["mask"]))  # unlabeled rows are not trained on
    return WorkerRows(ray.put(table), table.num_rows)


def train_dataset(config: TrainConfig, spec: dict, files: list | None = None):
    """The union of the train splits as one Ray Dataset of transformed crops. `files`: the
    splits' file infos when the caller has listed them already."""
    import ray.data

    fs, _ = storage.pyarrow_filesystem(config.data)
    if files is None:
        files = [f for split in config.train_split for f in split_file_infos(config.data, split)]
    paths = [storage.strip_scheme(f.uri) for f in files]
    # The split is executed once per epoch: its plan would be logged anew every epoch.
    ray.data.DataContext.get_current().print_on_execution_start = False
    if config.cache_reads and sum(f.size for f in files) <= DRIVER_READ_BYTES:
        dataset = ray.data.from_arrow(_blocks(_read_in_driver(paths, fs)))
    else:
        # select_columns is pushed down into the Parquet read: other columns are never fetched.
        dataset = ray.data.read_parquet(paths, filesystem=fs).select_columns(["image", "mask"])
        if config.cache_reads:
            # Every epoch re-executes the pipeline; without this each one starts with the
            # Parquet reads again (~5 s per epoch on 2 cores, however small the split). The
            # encoded bytes are what is kept (spilled to disk if they do not fit); decoding and
            # the random crops and flips still run anew every epoch.
            dataset = dataset.materialize()
    return dataset.map_batches(
        transform_batch,
        fn_kwargs={"spec": spec, "crop_size": config.crop_size, "flip": config.flip},
        batch_size=8,
        batch_format="numpy",
    )


def _read_in_driver(paths: list[str], fs):
    """The `image` and `mask` columns of a small split, read by the driver (pyarrow)."""
    import pyarrow.dataset as pads

    return pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["image", "mask"])


def _blocks(table, rows: int = BLOCK_ROWS) -> list:
    """`table` in slices of `rows`: Ray Data transforms a block per task, so one block would
    leave all but one CPU idle."""
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)] or [table]


def transform_batch(batch: dict, spec: dict, crop_size, flip: bool) -> dict:
    """Ray Data task: a fresh unseeded generator per call, so every epoch gets new crops."""
    labeled = [i for i, m in enumerate(batch["mask"]) if m is not None]
    batch = {k: [batch[k][i] for i in labeled] for k in ("image", "mask")}
    return transforms.TrainTransform(spec, crop_size, flip)(batch)


def class_distribution(config: TrainConfig) -> Distribution:
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

    return of_masks(masks(), config.num_classes)


def balanced_weights(config: TrainConfig, pixels: np.ndarray) -> tuple[float, ...] | None:
    """Class weights from the training masks' class pixel counts: median frequency balancing,
    or its square root (`balanced-sqrt`); None for `none`."""
    if config.class_weights == "none":
        return None
    power = 0.5 if config.class_weights == "balanced-sqrt" else 1.0
    return tuple(optim.median_frequency_weights(pixels, power))


def dataset_classes(data: str) -> ClassList | None:
    """The class list ingest recorded for the dataset at `data`; None for data that records
    none (written by other tools, or before ingest recorded class lists)."""
    try:
        return read_classes(data)
    except (FileNotFoundError, KeyError):
        return None


def check_training_split(config: TrainConfig, recipe: optim.Recipe) -> None:
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


def check_split_classes(config: TrainConfig, classes: ClassList) -> None:
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
