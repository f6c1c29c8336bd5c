"""`jobs/segment.py --save-overlays DIR`: each image segmented this run, blended with its mask
over a legend of the classes present (`fcn.engine.visualize.overlay`), as a PNG under DIR at its
mask's key (like mmsegmentation's --show-dir), for a person to look at.

A CPU stage after the pipeline, never in the model actor: it reads back what the run wrote
(the image from the input, the mask PNG), so the pipeline carries no extra pixels when the
option is off. Mask keys never collide (fcn.nightly.plan refuses a second image wanting an owned
key), so overlay keys, the same keys under DIR, never collide either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from fcn import storage
from fcn.config import SegmentConfig
from fcn.engine import images
from fcn.engine.classes import ClassList
from fcn.engine.visualize import overlay, png_bytes
from fcn.nightly import masks, schema
from fcn.nightly.schema import Status
from fcn.storage import Location

MAX_BLOCKS = 2000  # a task per --batch-size images, fewer and larger on huge nights
RESULT = pa.schema([("uri", pa.string()), ("overlay_uri", pa.string()), ("error", pa.string())])


def check(dir: Location, input: Location, output: Location) -> None:
    """A ValueError unless DIR lies apart from --input and --output: overlays inside the
    output would be taken for masks, inside the input for tomorrow's images, and a DIR above
    either could overwrite what is there."""
    for flag, other in (("--output", output), ("--input", input)):
        same_store = dir.fs.protocol == other.fs.protocol
        if same_store and (dir.path == other.path or dir.contains(other.path)
                           or other.contains(dir.path)):  # fmt: skip
            raise ValueError(
                f"--save-overlays {dir.uri} overlaps {flag} {other.uri}: choose a folder "
                "outside both (overlays would be taken for masks or images)"
            )


def target(dir: Location, output: Location, mask_uri: str) -> Location:
    """Where the overlay of the image whose mask is `mask_uri` goes: the mask's key under DIR."""
    return dir.child(storage.relative_key(output.uri, mask_uri))


def write_batch(batch: pa.Table, read, dir: Location, output: Location, classes: ClassList,
                max_pixels: int) -> pa.Table:  # fmt: skip
    """Rows (`uri`, `mask_uri`) -> their overlays written; returns `RESULT` rows (an overlay
    that fails is an `error`, never a failed night: the masks are what the night is for)."""
    uris = batch.column("uri").to_pylist()
    data = read(uris)
    palette, rows = classes.palette(), []
    for uri, mask_uri in zip(uris, batch.column("mask_uri").to_pylist(), strict=True):
        at = target(dir, output, mask_uri)
        try:
            image = images.decode_image(data[uri], max_pixels)
            mask_at = output.child(storage.relative_key(output.uri, mask_uri))
            mask = images.decode_mask(mask_at.read_bytes())
            at.write_bytes(png_bytes(overlay(image, mask, palette, classes.names)))
            rows.append({"uri": uri, "overlay_uri": at.uri, "error": None})
        except Exception as err:  # noqa: BLE001 - one unreadable image is one error row
            rows.append({"uri": uri, "overlay_uri": at.uri, "error": f"{err!r}"[:300]})
    return pa.Table.from_pylist(rows, RESULT)


@dataclass(frozen=True)
class Written:
    """What `write` did: the folder, overlays written, overlays that failed."""

    dir: str
    written: int
    failed: int


def write(table: pa.Table, dir: Location, output: Location, classes: ClassList, read,
          config: SegmentConfig, num_cpus: float) -> Written:  # fmt: skip
    """Overlays of the run's `ok` rows (a manifest table) as Ray tasks of `num_cpus` each, at
    most `config.io_concurrency` at once."""
    import ray

    # A raster's mask is a GeoTIFF of any size: a GIS shows it over the raster (its colormap)
    photos = pc.invert(pc.match_substring_regex(table.column("uri"), masks.RASTER_KEY))
    rows = table.filter(pc.and_(schema.where(table, Status.OK), photos)).select(["uri", "mask_uri"])
    if not rows.num_rows:
        return Written(dir.uri, 0, 0)
    chunk = max(config.batch_size, math.ceil(rows.num_rows / MAX_BLOCKS))
    ds = ray.data.from_arrow([rows.slice(i, chunk) for i in range(0, rows.num_rows, chunk)])
    kwargs = {"read": read, "dir": dir, "output": output, "classes": classes}
    ds = ds.map_batches(
        write_batch,
        fn_kwargs={**kwargs, "max_pixels": config.max_pixels},
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=num_cpus,
        compute=ray.data.TaskPoolStrategy(size=config.io_concurrency),
    )
    written = failed = 0
    for result in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        errors = pc.sum(pc.is_valid(result.column("error"))).as_py() or 0
        failed += errors
        written += result.num_rows - errors
    return Written(dir.uri, written, failed)
