"""Pictures a person looks at: an image beside its true and predicted masks, as PNG bytes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from fcn.data.classes import VOID


def sample_panel(image: np.ndarray, mask: np.ndarray, pred: np.ndarray, palette) -> np.ndarray:
    """image | truth | prediction side by side, masks in the class list's colors (void white)."""
    cmap = np.array(palette, dtype=np.uint8)
    cmap[VOID] = (255, 255, 255)
    return np.concatenate([image, cmap[mask], cmap[pred]], axis=1)


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
