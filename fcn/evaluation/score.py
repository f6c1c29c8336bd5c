"""Distributed evaluation: every image of a split scored exactly once across the processes.

The split's Parquet files are listed in sorted order and labeled rows are numbered globally;
process `rank` of `world` takes rows `i % world == rank`. No sampler padding (which would
count an image twice when the split size does not divide), no dropping; the confusion
matrices are summed across processes (`fcn.metrics.all_reduce_confusion`), so the scores equal
a single process evaluating the whole split.

Ray-free and MLflow-free: training's periodic validation and the evaluate job
(`fcn.evaluate_job`) both call `evaluate`; masks are predicted by `fcn.inference.predict`,
the same function the segment job uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from fcn import storage
from fcn.config.tiling import Tiling
from fcn.data.contract import COLUMNS, split_files
from fcn.engine import images, metrics
from fcn.engine.inference import predict

WHOLE_UNLESS_TOO_LARGE = Tiling()  # --tile auto at its default budget


@dataclass
class Row:
    index: int
    image_id: str
    image: bytes
    mask: bytes


def shard_rows(
    data: str, split: str, rank: int = 0, world: int = 1, limit: int | None = None
) -> Iterator[Row]:
    """Labeled rows of `split` owned by `rank` (global index % world == rank), in order;
    `limit`: the first `limit` labeled rows of the split only."""
    index = 0
    for uri in split_files(data, split):
        fs, path = storage.pyarrow_filesystem(uri)
        parquet = pq.ParquetFile(fs.open_input_file(path))
        for batch in parquet.iter_batches(batch_size=16, columns=list(COLUMNS)):
            columns = batch.to_pydict()
            for image_id, image, mask in zip(*(columns[c] for c in COLUMNS), strict=True):
                if mask is None:
                    continue  # unlabeled rows are not part of an evaluation
                if limit is not None and index >= limit:
                    return
                if index % world == rank:
                    yield Row(index, image_id, image, mask)
                index += 1


def decode_row(row: Row) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 H x W x 3 image, H x W mask) of a row; a mask of another size is an error."""
    image, mask = images.decode_image(row.image), images.decode_mask(row.mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"{row.image_id}: mask {mask.shape} and image {image.shape[:2]} differ")
    return image, mask


def evaluate_shard(
    model, rows, spec: dict, num_classes: int, keep: int = 0, tiling=WHOLE_UNLESS_TOO_LARGE
):
    """Confusion matrix of `rows`, and up to `keep` (id, image, mask, pred) samples;
    `tiling`: whole images unless one would not fit, by default (`--tile`).

    The model is put in eval mode for the pass and given back in the mode it came in
    (training calls this between steps).
    """
    was_training = model.training
    model.eval()
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    samples = []
    try:
        for row in rows:
            image, mask = decode_row(row)
            pred = predict(
                model, image[None], spec,
                tile=tiling.tile, tile_memory=tiling.memory, tile_margin=tiling.margin,
            )[0]  # fmt: skip
            hist += metrics.confusion_matrix(mask, pred, num_classes)
            if len(samples) < keep:
                samples.append((row.image_id, image, mask, pred))
    finally:
        model.train(was_training)
    return hist, samples


def evaluate(
    model,
    data,
    split,
    spec,
    num_classes,
    *,
    rank=0,
    world=1,
    limit=None,
    keep=0,
    tiling=WHOLE_UNLESS_TOO_LARGE,
):
    """Scores of the whole split: this rank's shard, confusion summed over all processes.

    Every process of an initialized torch.distributed group must call this (the all-reduce is
    collective). Returns (scores, hist, samples); `samples` are this rank's first `keep`.
    """
    rows = shard_rows(data, split, rank, world, limit)
    hist, samples = evaluate_shard(model, rows, spec, num_classes, keep, tiling)
    hist = metrics.all_reduce_confusion(hist)
    return metrics.scores(hist), hist, samples
