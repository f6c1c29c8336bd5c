"""Pictures a person looks at, in the class list's colours: an image beside its true and
predicted masks (validation panels), an image blended with its mask (segment's
--save-overlays), each with a legend naming the classes it shows; and PNG bytes of either."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcn.engine.classes import VOID

SWATCH = 12  # px: a legend entry's colour square, about the default font's height
PAD = 4  # px around and between legend entries
# mmsegmentation's --show-dir opacity: the image stays recognizable under the class colours.
OVERLAY_ALPHA = 0.5


def colors(palette) -> np.ndarray:
    """256 x 3 uint8 class colours with void white (it is no class: not black background)."""
    cmap = np.array(palette, dtype=np.uint8)
    cmap[VOID] = (255, 255, 255)
    return cmap


def present(*masks: np.ndarray) -> list[int]:
    """The class values found in any of `masks`, void excluded, in class order."""
    found = np.unique(np.concatenate([np.unique(m) for m in masks]))
    return [int(c) for c in found if c != VOID]


def legend(classes: Sequence[int], names: Sequence[str], palette, width: int) -> np.ndarray:
    """A white strip `width` px wide: a colour swatch and the name of each of `classes`
    (values into `names`; a value beyond them is shown as its number), wrapped into rows."""
    font = ImageFont.load_default()
    cmap = colors(palette)
    labels = [names[c] if c < len(names) else str(c) for c in classes]
    entries, x, row = [], PAD, 0
    for value, label in zip(classes, labels, strict=True):
        size = SWATCH + PAD + int(font.getlength(label)) + 2 * PAD
        if x > PAD and x + size > width:  # wrap; an entry wider than the strip is clipped
            x, row = PAD, row + 1
        entries.append((x, row, value, label))
        x += size
    rows = row + 1 if entries else 0
    strip = Image.new("RGB", (width, rows * (SWATCH + PAD) + PAD), "white")
    draw = ImageDraw.Draw(strip)
    for x, row, value, label in entries:
        y = PAD + row * (SWATCH + PAD)
        draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=tuple(map(int, cmap[value])),
                       outline=(96, 96, 96))  # fmt: skip
        draw.text((x + SWATCH + PAD, y + SWATCH // 2), label, fill="black", font=font, anchor="lm")
    return np.asarray(strip)


def sample_panel(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, palette,
                 names: Sequence[str] | None = None) -> np.ndarray:  # fmt: skip
    """image | truth | prediction side by side, masks in the class list's colours (void
    white); with `names`, a legend of the classes in either mask underneath."""
    cmap = colors(palette)
    panel = np.concatenate([image, cmap[mask], cmap[pred]], axis=1)
    if names is None:
        return panel
    return np.concatenate([panel, legend(present(mask, pred), names, palette, panel.shape[1])])


def overlay(image: np.ndarray, mask: np.ndarray, palette, names: Sequence[str],
            alpha: float = OVERLAY_ALPHA) -> np.ndarray:  # fmt: skip
    """`image` (H x W x 3 uint8) blended with the colours of `mask` (H x W class values; void
    pixels keep the image), over a legend of the classes the mask holds."""
    cmap = colors(palette)
    blended = image * (1 - alpha) + cmap[mask] * alpha
    labeled = (mask != VOID)[..., None]
    picture = np.where(labeled, blended.round(), image).astype(np.uint8)
    return np.concatenate([picture, legend(present(mask), names, palette, image.shape[1])])


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def figure_png(fig) -> bytes:
    """A pyplot figure as PNG bytes (100 dpi); the figure is closed (pyplot keeps it otherwise)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
