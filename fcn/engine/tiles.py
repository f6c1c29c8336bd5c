"""Tiled inference geometry: any image size at the memory of one tile (README, `--tile`).

An FCN output pixel depends on the input pixels within its receptive field only (its
`context`, a radius in pixels, declared by each net in fcn.engine.models.CONTEXT and
checked by tests/unit/test_tiles.py). A tile therefore gives the whole-image scores at every
pixel at least `context` pixels from the tile's inner borders, provided its origin lies on the
net's coarsest grid (GRID = 32 for every FCN here: five 2x pools, or AlexNet's 4.2.2.2), so
that pad 100, the ceil-mode pools and the crop offsets line up exactly as in the whole image.
Each tile's inner border (`margin` = context rounded up to the grid) is discarded; the kept
parts of neighbouring tiles meet halfway through their overlap, so no seam shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GRID = 32  # every FCN here (VGG16, AlexNet, GoogLeNet) has a coarsest stride of 32
# Floats alive per (padded) input pixel at the peak of a whole-image forward, per unit of
# the first convolution's output channels / stride^2: its output and the next layer's
# (ReLU in place), plus a oneDNN reorder of one of them (measured: docs/nightly.md).
FLOATS_PER_FIRST_CHANNEL = 3
# Floats per output pixel per class: logits, probabilities, the statistics' temporaries.
FLOATS_PER_CLASS = 4


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the tile [start, stop) and the part kept [keep, keep_stop)."""

    start: int
    stop: int
    keep: int
    keep_stop: int

    @property
    def tile(self) -> slice:
        """The tile, in image coordinates."""
        return slice(self.start, self.stop)

    @property
    def kept(self) -> slice:
        """The kept part, in image coordinates."""
        return slice(self.keep, self.keep_stop)

    @property
    def kept_in_tile(self) -> slice:
        """The kept part, in the tile's own coordinates."""
        return slice(self.keep - self.start, self.keep_stop - self.start)


def margin_of(model, scale: float = 1.0, margin: int | None = None) -> int:
    """Pixels discarded at each inner tile border. By default (`margin` None) the net's
    context, in input pixels at the smallest input scale, rounded up to the grid: tiled masks
    then equal whole-image masks exactly. A smaller `margin` (a multiple of the grid) trades
    that for less overlap: pixels near a cut lose the far end of their context, where an
    FCN's scores depend little (benchmarks/tiles.py measures the agreement)."""
    if margin is not None:
        if margin < 0 or margin % GRID:
            raise ValueError(f"--tile-margin must be a multiple of {GRID} >= 0, got {margin}")
        return margin
    context = getattr(model, "context", None)
    if context is None:
        raise ValueError(f"{type(model).__name__} declares no receptive field: it cannot be tiled")
    return GRID * math.ceil(context / scale / GRID)


def minimum_side(model, scale: float = 1.0, margin: int | None = None) -> int:
    return 2 * margin_of(model, scale, margin) + GRID


def check_side(model, side: int, scale: float = 1.0, margin: int | None = None) -> int:
    """`side` rounded down to the grid; a ValueError in one line when that is below the
    minimum tile for this net and margin."""
    side -= side % GRID
    least = minimum_side(model, scale, margin)
    if side < least:
        raise ValueError(
            f"--tile {side} is too small for {type(model).__name__}: at least {least} (twice "
            f"the {margin_of(model, scale, margin)} px margin at scale {scale:g}, plus {GRID})"
        )
    return side


def spans(length: int, side: int, margin: int) -> list[Span]:
    """Tiles of at most `side` pixels covering [0, length), origins on the grid, each kept
    part at least `margin` pixels from its tile's inner borders."""
    if side < 2 * margin + GRID or side % GRID or margin % GRID:
        raise ValueError(f"tile {side} with margin {margin}: need a multiple of {GRID} >= "
                         f"{2 * margin + GRID}")  # fmt: skip
    if length <= side:
        return [Span(0, length, 0, length)]
    # As few tiles as cover the axis, then each as short as that count allows (a grid
    # multiple): every tile overlaps the next by exactly 2 * margin, none by more.
    count = math.ceil((length - 2 * margin) / (side - 2 * margin))
    side = GRID * math.ceil((length + 2 * margin * (count - 1)) / count / GRID)
    origins = [i * (side - 2 * margin) for i in range(count)]
    tiles = [(o, min(o + side, length)) for o in origins]
    # Cut halfway through each overlap: both sides then keep >= margin from their border.
    cuts = [(nxt[0] + prev[1]) // 2 for prev, nxt in zip(tiles, tiles[1:], strict=False)]
    bounds = [0, *cuts, length]
    return [Span(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(tiles)]


def estimate_bytes(model, height: int, width: int, num_classes: int, batch: int = 1) -> int:
    """Peak activation bytes of one forward of `batch` images of height x width (+ scores)."""
    first = next(m for m in model.modules() if type(m).__name__ == "Conv2d")
    pad, stride = first.padding[0], first.stride[0]
    per_pixel = FLOATS_PER_FIRST_CHANNEL * first.out_channels / stride**2
    padded = (height + 2 * pad) * (width + 2 * pad)
    return int(4 * batch * (padded * per_pixel + height * width * num_classes * FLOATS_PER_CLASS))


def auto_side(
    model, budget: float, num_classes: int, scale: float = 1.0, margin: int | None = None
) -> int:
    """The largest tile side (a grid multiple) whose forward fits `budget` bytes; at least
    the minimum tile (a budget below that buys the minimum)."""
    side = minimum_side(model, scale, margin)
    while estimate_bytes(model, side + GRID, side + GRID, num_classes) <= budget:
        side += GRID
    return side
