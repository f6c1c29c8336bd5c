"""The segment job's raster actor: rasters (GeoTIFF, COG) of any size, one per call, segmented
tile by tile (fcn.engine.rasters) into a GeoTIFF mask at the raster's mask key, at the memory
of one tile.

Rasters skip the read + decode stage (a raster is never in memory whole) and go to this actor
pool instead of `Predictor`'s. Its rows are the manifest's, and it writes their state part as
the PNG writer does (`stages.record`), after the mask: the mask is copied to its key whole, so
a kill mid-raster leaves no mask and no state row, and the next night redoes that raster.

When a night has fewer rasters than actors, each raster is cut into bands of tile rows
(`band_rows`), one work unit each, so the pool shares it: every band's mask rows go to a part
under `<output>/_raster_parts/<run>/`, and `merge`, once all bands of a raster are done, writes
the mask from its parts (whole or not at all), then the state row, then deletes the parts.
"""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import pyarrow as pa

from fcn import storage
from fcn.config import SegmentConfig
from fcn.engine import images
from fcn.engine.classes import ClassList
from fcn.nightly import schema, stages
from fcn.nightly.schema import Status
from fcn.storage import Location

PARTS = "_raster_parts"  # <output>/_raster_parts/<run>/: the bands of rasters being segmented
PLANNED = ("uri", "mask_uri", "etag", "size")


def bands_per_raster(rasters: int, actors: int) -> int:
    """Bands to cut each raster into so that `actors` actors have work: 1 (whole rasters) once
    there are as many rasters as actors."""
    return max(1, math.ceil(actors / max(1, rasters)))


def band_rows(rows: pa.Table, output: Location, run_id: str, bands: int) -> pa.Table:
    """Each planned raster row `bands` times: band k of `bands`, with the URI of its part
    (named by a digest of the mask key: parts never collide, never leave their prefix)."""
    out = []
    for row in rows.select(list(PLANNED)).to_pylist():
        digest = hashlib.sha256(row["mask_uri"].encode()).hexdigest()[:24]
        for k in range(bands):
            part = output.child(f"{PARTS}/{run_id}/{digest}-{k:03d}-of-{bands:03d}.tif").uri
            out.append({**row, "band": k, "bands": bands, "part": part})
    return pa.Table.from_pylist(out)


class RasterSegmenter:
    """Ray Data `map_batches` callable: planned raster rows (fcn.nightly.plan.TODO_COLUMNS) in,
    manifest rows out. Always PyTorch: the tiles need the net's receptive field, which an ONNX
    graph does not declare."""

    def __init__(self, model_uri: str, config: SegmentConfig, classes: ClassList,
                 parts: Location, model: str, run_id: str):  # fmt: skip
        # torch and the model load here, in the actor (as fcn.nightly.predictor's Predictor):
        # the job's driver names this class and never loads a model.
        import torch

        from fcn.tracking.models import load_model

        device = "cuda" if config.gpus_per_actor > 0 else "cpu"
        torch.set_num_threads(config.threads or max(1, int(config.cpus_per_actor)))
        loaded = load_model(model_uri, device)
        self.model, self.spec = loaded.model, loaded.preprocessing
        self.config, self.classes, self.tiling = config, classes, config.tiling()
        self.parts, self.model_name, self.run_id = parts, model, run_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        if "band" in batch.column_names:  # bands of shared rasters: parts, for `merge`
            bands = [self._band(row) for row in batch.to_pylist()]
            return pa.Table.from_pylist(bands, schema.BAND_DONE)
        rows = [self._segment(row) for row in batch.to_pylist()]
        return stages.record(rows, self.parts, self.model_name, self.run_id)

    def _segment(self, row: dict) -> dict:
        row = {k: row[k] for k in PLANNED}
        t = time.perf_counter()
        done, failed = self._run(row["uri"], row["mask_uri"])
        if failed:
            return {**row, **failed}
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

    def _band(self, row: dict) -> dict:
        out = {**{k: row[k] for k in PLANNED}, "band": row["band"], "part": row["part"]}
        t = time.perf_counter()
        done, failed = self._run(row["uri"], row["part"], (row["band"], row["bands"]))
        if failed:
            return {**out, **failed}
        return {**out, "status": Status.OK, "rows": done.height, "height": done.raster_height,
                "width": done.width, "model_seconds": time.perf_counter() - t,
                "class_pixels": list(done.class_pixels)}  # fmt: skip

    def _run(self, uri: str, dst: str, band: tuple[int, int] = (0, 1)):
        """(RasterResult, None), or (None, the error columns) when the raster failed."""
        from fcn.engine import rasters

        try:
            return rasters.segment_raster(
                self.model, self.spec, uri, dst, self.classes, self.tiling,
                self.config.max_pixels, band,
            ), None  # fmt: skip
        except images.BadImage as err:  # the raster itself: not retried while it is unchanged
            return None, {"status": Status.ERROR, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - unreadable now, a failed copy: retried
            return None, {"status": Status.ERROR, "error": f"raster failed: {err!r}",
                          "etag": None}  # fmt: skip


def merge(group: pa.Table, classes: ClassList, parts: Location, model: str,
          run_id: str) -> pa.Table:  # fmt: skip
    """Ray Data `map_groups` on the bands of one raster: its mask from the parts (whole or not
    at all), then its manifest row and state part (`stages.record`), then the parts deleted.
    A failed band fails the raster; its error, and whether it is retried, are the band's."""
    from fcn.engine import rasters  # a Ray task's import (it brings torch), not the driver's

    bands = sorted(group.to_pylist(), key=lambda b: b["band"])
    row = {k: bands[0][k] for k in PLANNED}
    failed = [b for b in bands if b["status"] != Status.OK]
    written = [b["part"] for b in bands if b["status"] == Status.OK and b["rows"]]
    try:
        if failed:
            etag = None if any(b["etag"] is None for b in failed) else row["etag"]
            row.update(status=Status.ERROR, error=failed[0]["error"], etag=etag)
        else:
            t = time.perf_counter()
            rasters.merge_bands(row["uri"], written, row["mask_uri"], classes)
            counts = np.sum([b["class_pixels"] for b in bands], axis=0)
            row.update(
                status=Status.OK, height=bands[0]["height"], width=bands[0]["width"],
                model_seconds=sum(b["model_seconds"] for b in bands),
                write_seconds=time.perf_counter() - t,
                classes_present=int((counts > 0).sum()),
            )  # fmt: skip
    except Exception as err:  # noqa: BLE001 - a part unreadable, a failed copy: retried
        row.update(status=Status.ERROR, error=f"raster merge failed: {err!r}", etag=None)
    table = stages.record([row], parts, model, run_id)
    for part in written:
        storage.delete(part)
    return table


def remove_parts(output: Location, run_id: str, older_than: float = 2 * 86400) -> None:
    """Delete this run's raster parts (any left by a failed merge) and those of runs started
    more than `older_than` seconds ago (killed mid-raster; no night runs for days, so a night
    still running keeps its parts)."""
    root = output.child(PARTS)
    if not root.exists():
        return
    cutoff = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - older_than))
    for path in root.fs.ls(root.path, detail=False):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if name == run_id or name < cutoff:  # run ids start with their UTC start time
            root.fs.rm(path, recursive=True)
