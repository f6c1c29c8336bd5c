"""Rasters larger than memory (GeoTIFF, COG): segmented window by window, at the memory of
one tile (docs/rasters.md).

`segment_raster` walks the tiles of fcn.engine.tiles over the raster, reads each tile's window
(never the whole raster), predicts it as a whole image and writes only the tile's kept part
into the mask, so the mask equals `predict` on the whole image. The mask is a single-band
uint8 tiled GeoTIFF with the input's CRS and transform and the class palette as colormap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from fcn import storage
from fcn.config.tiling import Tiling
from fcn.engine import inference, tiles
from fcn.engine.classes import ClassList
from fcn.engine.images import DEFAULT_MAX_PIXELS, BadImage

AUTO = Tiling()  # tiles of the largest side the default budget allows
MASK_BLOCK = 256  # mask tile side: GDAL needs a multiple of 16; 256 is the COG default
# GDAL's block cache (MB): its default is 5% of RAM, which a 20k x 20k mask would fill; the
# kept parts of tiles cut through mask blocks, so a band of blocks must stay cached until
# its neighbour tile completes them -- a few MB for any width here.
GDAL_CACHE_MB = 64
# A mask in progress is a local file named after its process: a process killed mid-raster
# (SIGKILL runs no cleanup) leaves one, which the next raster's writer removes.
TEMPORARY = re.compile(r"fcn-mask-(\d+)-.*\.tif")


@dataclass(frozen=True)
class RasterInfo:
    height: int
    width: int
    bands: int
    dtype: str
    crs: str | None  # WKT; None for a raster without georeference
    transform: tuple[float, ...] | None  # the affine's a, b, c, d, e, f; None if absent


@dataclass(frozen=True)
class RasterResult:
    """What `segment_raster` wrote: the mask's size, the tiles run, pixels per class; for a
    band, the rows it wrote from `top` (`height` of them) of the raster's `raster_height`."""

    height: int
    width: int
    tiles: int
    class_pixels: tuple[int, ...]  # index = class
    raster_height: int | None = None
    top: int = 0


def open_raster(uri: str):
    """A rasterio dataset for `uri`. Object storage goes through fcn.storage's filesystem
    (rasterio >= 1.4 takes it as `opener`), so credentials come from one place; GDAL then
    reads only the byte ranges of the windows asked for."""
    if storage.scheme(uri) == "file":
        return rasterio.open(storage.strip_scheme(uri))
    fs, path = storage.filesystem(uri)
    return rasterio.open(path, opener=fs)


def info(dataset) -> RasterInfo:
    georeferenced = dataset.crs is not None or not dataset.transform.is_identity
    return RasterInfo(
        height=dataset.height,
        width=dataset.width,
        bands=dataset.count,
        dtype=str(dataset.dtypes[0]),
        crs=dataset.crs.to_wkt() if dataset.crs is not None else None,
        transform=tuple(dataset.transform)[:6] if georeferenced else None,
    )


def check_readable(dataset) -> None:
    """Refuse, in one line, rasters with no RGB reading (before any pixel is read)."""
    name = getattr(dataset, "name", "raster")
    if dataset.count not in (1, 3, 4):
        raise BadImage(
            f"{name}: {dataset.count} bands; the models read 1 (gray), 3 (RGB) or 4 (RGB + "
            "alpha): export the RGB bands (gdal_translate -b 1 -b 2 -b 3)",
            "unsupported",
        )
    if set(dataset.dtypes) != {"uint8"}:
        raise BadImage(
            f"{name}: {dataset.dtypes[0]} pixels; the models read 8-bit RGB: convert it "
            "(gdal_translate -ot Byte -scale)",
            "unsupported",
        )


def read_window(dataset, rows, cols, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Rows [start, stop) x cols [start, stop) of `dataset` -> uint8 RGB `H x W x 3`: gray is
    repeated, alpha dropped. The pixel cap guards every window, as it guards every image."""
    check_readable(dataset)
    (r0, r1), (c0, c1) = rows, cols
    if (r1 - r0) * (c1 - c0) > max_pixels:
        raise BadImage(
            f"window {r1 - r0}x{c1 - c0} = {(r1 - r0) * (c1 - c0)} pixels exceeds "
            f"--max-pixels {max_pixels}: use a smaller tile",
            "too_large",
        )
    bands = (1, 2, 3) if dataset.count >= 3 else (1,)  # a 4th band is alpha
    data = dataset.read(bands, window=Window.from_slices((r0, r1), (c0, c1)))
    rgb = np.moveaxis(data, 0, -1)
    return np.ascontiguousarray(np.repeat(rgb, 3, -1) if rgb.shape[-1] == 1 else rgb)


def write_mask(dst_uri: str, raster: RasterInfo, classes: ClassList, paint: Callable):
    """Write the mask at `dst_uri` whole or not at all: `paint(write)` calls
    `write(rows, cols, block)` window by window into a local temporary GeoTIFF (GDAL writes
    tiles in place, which object storage cannot), which is then copied to `dst_uri` in one
    piece (fcn.storage.write_with). The temporary file is deleted whatever happens. Returns
    what `paint` returns."""
    remove_orphans()
    fd, tmp = tempfile.mkstemp(prefix=f"fcn-mask-{os.getpid()}-", suffix=".tif")
    os.close(fd)
    profile = dict(
        driver="GTiff", height=raster.height, width=raster.width, count=1, dtype="uint8",
        crs=raster.crs, transform=rasterio.Affine(*raster.transform) if raster.transform else None,
        tiled=True, blockxsize=MASK_BLOCK, blockysize=MASK_BLOCK, compress="deflate",
    )  # fmt: skip
    try:
        with rasterio.open(tmp, "w", **profile) as out:
            # The class colours make the mask a picture in any GIS; the index stays the class.
            out.write_colormap(1, {i: tuple(int(v) for v in c) for i, c in
                                   enumerate(classes.palette())})  # fmt: skip

            def write(rows, cols, block):
                out.write(block, 1, window=Window.from_slices(rows, cols))

            result = paint(write)
        with open(tmp, "rb") as src:
            storage.write_with(dst_uri, lambda dst: shutil.copyfileobj(src, dst))
        return result
    finally:
        os.unlink(tmp)


def segment_raster(
    model, spec, src_uri: str, dst_uri: str, classes: ClassList, tiling: Tiling = AUTO,
    max_pixels: int = DEFAULT_MAX_PIXELS, band: tuple[int, int] = (0, 1),
) -> RasterResult:  # fmt: skip
    """The class mask of the raster at `src_uri`, written to `dst_uri` (a GeoTIFF), one tile
    in memory at a time: tiles of `tiling.tile` pixels ("auto" or "none": the largest that
    fits `tiling.memory`, fcn.engine.tiles.auto_side; a raster never runs whole), each
    predicted whole, its kept part written. With the default margin the mask is the one
    `predict` gives the whole image.

    `band=(k, n)` segments only the k-th of n bands of tile rows (`bands`) and writes the rows
    they keep, from `RasterResult.top` down, as a part for `merge_bands`: n actors can share
    one raster. A band with no tile row (n above the raster's rows of tiles) writes nothing."""
    side, margin = _geometry(model, tiling, classes)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_raster(src_uri) as dataset:
        check_readable(dataset)
        raster = info(dataset)
        rows = bands(tiles.spans(raster.height, side, margin), band[1])[band[0]]
        cols = tiles.spans(raster.width, side, margin)
        counts = np.zeros(classes.num_classes, np.int64)
        if not rows:
            return RasterResult(0, raster.width, 0, tuple(map(int, counts)), raster.height)
        top, bottom = rows[0].keep, rows[-1].keep_stop

        def paint(write):
            for r in rows:
                for c in cols:
                    window = read_window(dataset, (r.start, r.stop), (c.start, c.stop), max_pixels)
                    mask = inference.predict(model, window[None], spec, tile="none")[0]
                    kept = mask[r.kept_in_tile, c.kept_in_tile]
                    write((r.keep - top, r.keep_stop - top), (c.keep, c.keep_stop), kept)
                    counts[:] += np.bincount(kept.ravel(), minlength=len(counts))[: len(counts)]
                    release_free_memory()

        whole = band[1] == 1
        out = raster if whole else replace(raster, height=bottom - top, crs=None,
                                                        transform=None)  # fmt: skip
        with warnings.catch_warnings():  # a part has no georeference: the merge adds it
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            write_mask(dst_uri, out, classes, paint)
    return RasterResult(bottom - top, raster.width, len(rows) * len(cols),
                        tuple(map(int, counts)), raster.height, top)  # fmt: skip


def bands(rows: list[tiles.Span], n: int) -> list[list[tiles.Span]]:
    """`rows` (the tile rows of a raster) in n contiguous bands, as even as the rows allow;
    their kept parts tile the raster's rows in order. Empty bands when n exceeds the rows."""
    return [[r for i, r in enumerate(rows) if i * n // len(rows) == k] for k in range(n)]


def merge_bands(src_uri: str, parts: list[str], dst_uri: str, classes: ClassList) -> None:
    """The mask of the raster at `src_uri` from its bands' parts (`segment_raster(band=...)`,
    in band order, empty bands left out), written to `dst_uri` whole or not at all with the
    raster's georeference, a strip of mask blocks in memory at a time."""
    with open_raster(src_uri) as dataset:
        raster = info(dataset)

    def paint(write):
        top = 0
        for part in parts:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                band = open_raster(part)
            with band:
                for r in range(0, band.height, MASK_BLOCK):
                    stop = min(r + MASK_BLOCK, band.height)
                    strip = band.read(1, window=Window.from_slices((r, stop), (0, band.width)))
                    write((top + r, top + stop), (0, raster.width), strip)
                top += band.height
        if top != raster.height:
            raise ValueError(f"{src_uri}: the parts cover {top} of {raster.height} rows")

    write_mask(dst_uri, raster, classes, paint)


def _geometry(model, tiling: Tiling, classes: ClassList) -> tuple[int, int]:
    """(tile side, margin) of `tiling` for `model`."""
    if str(tiling.tile) in ("auto", "none"):
        side = tiles.auto_side(model, tiling.memory, classes.num_classes, 1.0, tiling.margin)
    else:
        side = tiles.check_side(model, int(tiling.tile), 1.0, tiling.margin)
    return side, tiles.margin_of(model, 1.0, tiling.margin)


def remove_orphans(folder: str | None = None) -> list[str]:
    """Delete the masks in progress of processes that no longer run (killed mid-raster);
    returns their paths. A live process's file is never touched."""
    folder = folder or tempfile.gettempdir()
    removed = []
    for name in os.listdir(folder):
        match = TEMPORARY.fullmatch(name)
        if match and not _alive(int(match[1])):
            path = os.path.join(folder, name)
            try:
                os.unlink(path)
                removed.append(path)
            except FileNotFoundError:  # another process's sweep was first
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if os.name == "posix" else None


def release_free_memory() -> None:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim; a no-op where the C
    library has none). The model actors run with glibc's trimming and mmap off (fast steps,
    docs/environment.md); over hundreds of tiles the freed buffers of each tile then stay
    resident, and a 20,000^2 raster peaked 1.26x higher than a 2,000^2 one. Once a tile it
    costs page faults on the next tile's buffers, small beside a tile's forward."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
