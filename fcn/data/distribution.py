"""The class distribution of label masks: summed class pixels and the images each class is in.

Here, in the data layer, because two capabilities meet on it and must not import each other:
training computes it from its splits' masks (the class weights, and every checkpoint's
`class_distribution`), and the nightly drift report (fcn.nightly.drift) compares each night's
predicted masks against it. Plain NumPy: no I/O, no Ray, no MLflow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Distribution:
    """Summed class pixel counts and per-class image counts over `images` images."""

    pixels: np.ndarray  # (num_classes,) int64
    image_counts: np.ndarray  # (num_classes,) images in which the class appears
    images: int

    def pixel_shares(self) -> np.ndarray | None:
        """None when there is no pixel to share (an empty night)."""
        return normalize(self.pixels)

    def image_frequencies(self) -> np.ndarray | None:
        return self.image_counts / self.images if self.images else None

    def to_dict(self) -> dict:
        return {
            "pixel_counts": self.pixels.tolist(),
            "image_counts": self.image_counts.tolist(),
            "images": self.images,
        }

    @classmethod
    def from_dict(cls, value: dict, num_classes: int) -> Distribution:
        """A recorded distribution (checkpoint config.json `class_distribution`)."""
        pixels = np.asarray(value["pixel_counts"], np.float64)
        image_counts = np.asarray(value.get("image_counts") or [0] * num_classes, np.float64)
        if pixels.shape != (num_classes,) or image_counts.shape != (num_classes,):
            raise ValueError(f"class_distribution does not have {num_classes} classes")
        return cls(pixels, image_counts, int(value.get("images") or 0))

    def __add__(self, other: Distribution) -> Distribution:
        return Distribution(
            self.pixels + other.pixels,
            self.image_counts + other.image_counts,
            self.images + other.images,
        )


def empty(num_classes: int) -> Distribution:
    return Distribution(np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64), 0)


def of_masks(masks: Iterable[np.ndarray], num_classes: int) -> Distribution:
    """The distribution of label masks (void 255 is no class): a training split's, the
    reference its model's nights are compared with. Predicted masks have no void, so a
    labeled split's void borders (a few % of VOC's pixels) are left out of both views."""
    pixels = np.zeros(num_classes, np.int64)
    image_counts = np.zeros(num_classes, np.int64)
    images = 0
    for mask in masks:
        counts = np.bincount(mask[mask < num_classes], minlength=num_classes)
        pixels += counts
        image_counts += counts > 0
        images += 1
    return Distribution(pixels, image_counts, images)


def normalize(counts: np.ndarray) -> np.ndarray | None:
    total = float(np.sum(counts))
    return np.asarray(counts, np.float64) / total if total > 0 else None
