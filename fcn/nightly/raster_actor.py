"""The segment job's raster actor: rasters (GeoTIFF, COG) of any size, one per call, segmented
tile by tile (fcn.engine.rasters) into a GeoTIFF mask at the raster's mask key, at the memory
of one tile.

Rasters skip the read + decode stage (a raster is never in memory whole) and go to this actor
pool instead of `Predictor`'s. Its rows are the manifest's, and it writes their state part as
the PNG writer does (`stages.record`), after the mask: the mask is copied to its key whole, so
a kill mid-raster leaves no mask and no state row, and the next night redoes that raster.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from fcn.config import SegmentConfig
from fcn.engine import images, rasters
from fcn.engine.classes import ClassList
from fcn.nightly import stages
from fcn.nightly.schema import Status
from fcn.storage import Location
from fcn.tracking.models import load_model


class RasterSegmenter:
    """Ray Data `map_batches` callable: planned raster rows (fcn.nightly.plan.TODO_COLUMNS) in,
    manifest rows out. Always PyTorch: the tiles need the net's receptive field, which an ONNX
    graph does not declare."""

    def __init__(self, model_uri: str, config: SegmentConfig, classes: ClassList,
                 parts: Location, model: str, run_id: str):  # fmt: skip
        import torch

        device = "cuda" if config.gpus_per_actor > 0 else "cpu"
        torch.set_num_threads(config.threads or max(1, int(config.cpus_per_actor)))
        loaded = load_model(model_uri, device)
        self.model, self.spec = loaded.model, loaded.preprocessing
        self.config, self.classes, self.tiling = config, classes, config.tiling()
        self.parts, self.model_name, self.run_id = parts, model, run_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [self._segment(row) for row in batch.to_pylist()]
        return stages.record(rows, self.parts, self.model_name, self.run_id)

    def _segment(self, row: dict) -> dict:
        row = {k: row[k] for k in ("uri", "mask_uri", "etag", "size")}
        t = time.perf_counter()
        try:
            done = rasters.segment_raster(
                self.model, self.spec, row["uri"], row["mask_uri"], self.classes, self.tiling,
                self.config.max_pixels,
            )  # fmt: skip
        except images.BadImage as err:  # the raster itself: not retried while it is unchanged
            return {**row, "status": Status.ERROR, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - unreadable now, a failed copy: retried
            return {**row, "status": Status.ERROR, "error": f"raster failed: {err!r}", "etag": None}
        # No class_counts: one raster's pixels would outweigh a night of photos in the drift
        # report. No confidence statistics either, so it never enters the labeling queue.
        return {
            **row,
            "status": Status.OK,
            "height": done.height,
            "width": done.width,
            "model_seconds": time.perf_counter() - t,
            "classes_present": int((np.asarray(done.class_pixels) > 0).sum()),
        }
