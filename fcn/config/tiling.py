"""Tiled inference settings (`--tile`, `--tile-memory-mb`, `--tile-margin`) shared by the jobs
that run the net on images, and the `Tiling` they hand to fcn.engine.inference.predict."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import setting

# `--tile auto`: tile what needs more than this per forward (whole images below it run whole).
DEFAULT_TILE_MEMORY = 4 << 30


@dataclass(frozen=True)
class Tiling:
    """How a job runs the net on its images (`--tile`, `--tile-memory-mb`, `--tile-margin`)."""

    tile: str | int = "auto"  # "auto", "none" or a tile side in pixels
    memory: int = DEFAULT_TILE_MEMORY  # bytes one forward may use under "auto"
    margin: int | None = None  # None: the net's receptive field (exact masks)


def tile():
    """The `--tile` setting of a job that runs the net on images (fcn.engine.tiles)."""
    return setting(
        "auto", "tiled inference: 'auto' tiles only images whose forward would exceed "
        "--tile-memory-mb, 'none' runs every image whole, a number N runs tiles of N x N "
        "pixels (a multiple of 32, at least the net's minimum: 480-544 for the FCNs here); "
        "tiles overlap by the net's receptive field, so masks equal whole-image masks",
    )  # fmt: skip


def tile_memory():
    # 4 GiB: the activations of a ~3.6-megapixel FCN-VGG16 forward (~1.1 kB per pixel), so
    # VOC-size images always run whole and a 12-megapixel photo runs as ~1900-pixel tiles.
    return setting(
        DEFAULT_TILE_MEMORY >> 20, "--tile auto: activation budget of one forward, in MiB"
    )


def tile_margin():
    return setting(
        None, "pixels discarded at each inner tile border, a multiple of 32; default: the net's "
        "receptive field (masks equal whole-image masks exactly; 224-256 px for the FCNs "
        "here); less overlaps less, and pixels near a cut may then differ "
        "(results/tiles.md measures by how much)",
    )  # fmt: skip


def check_tile(value: str, memory_mb: int, margin: int | None) -> None:
    """Refuse a `--tile` that is not auto, none or a positive whole number of pixels, and a
    budget or margin that cannot work."""
    if value not in ("auto", "none") and not (str(value).isdigit() and int(value) > 0):
        raise ValueError(f"--tile must be auto, none or a tile side in pixels, got {value!r}")
    if memory_mb < 1:
        raise ValueError(f"--tile-memory-mb must be >= 1, got {memory_mb}")
    if margin is not None and (margin < 0 or margin % 32):
        raise ValueError(f"--tile-margin must be a multiple of 32 >= 0, got {margin}")
