"""Decode, normalize and jointly crop/flip image + mask rows (run inside Ray Data map_batches).

Decoding is `fcn.images` (the codec every job uses: same EXIF orientation, same pixel cap).

Image and mask always go through one transform together, as in torchvision's segmentation
reference, so a crop or flip can never misalign them. Normalization follows the weights
(`fcn.models.preprocess`), and happens before padding so that crop padding is the mean
pixel (0 after normalization) while the mask is padded with void 255, ignored by the loss.
"""

from __future__ import annotations

import numpy as np

from fcn.engine.classes import VOID
from fcn.engine.images import decode_image, decode_mask
from fcn.engine.models import preprocess


def normalize(image: np.ndarray, spec: dict) -> np.ndarray:
    """H x W x 3 uint8 RGB -> 3 x H x W float32 as the weights expect."""
    return preprocess.normalize(image, spec).numpy()


def random_crop(image: np.ndarray, mask: np.ndarray, size: int, rng: np.random.Generator):
    """Joint random `size` x `size` crop of `image` (C x H x W) and `mask` (H x W).

    Images smaller than `size` are padded (bottom/right) first: image with 0, mask with void.
    """
    height, width = mask.shape
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        image = np.pad(image, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=0)
        mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=VOID)
        height, width = mask.shape
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return (
        image[:, top : top + size, left : left + size],
        mask[top : top + size, left : left + size],
    )


def hflip(image: np.ndarray, mask: np.ndarray):
    return image[:, :, ::-1], mask[:, ::-1]


class TrainTransform:
    """Ray Data batch transform: rows with `image`/`mask` bytes -> float `image`, uint8 `mask`.

    With `crop_size` every output has the same shape (one minibatch tensor); without it,
    images keep their size and the training loop takes them one at a time (the paper's
    whole-image batch 1). The generator is not seeded per call, so every epoch re-runs the
    pipeline with new crops and flips.
    """

    def __init__(self, spec: dict, crop_size: int | None = None, flip: bool = False, seed=None):
        if crop_size is not None and crop_size < 1:
            raise ValueError(f"crop_size must be >= 1, got {crop_size}")
        self.spec = spec
        self.crop_size = crop_size
        self.flip = flip
        self.rng = np.random.default_rng(seed)

    def one(self, image_bytes: bytes, mask_bytes: bytes):
        image = normalize(decode_image(image_bytes), self.spec)
        mask = decode_mask(mask_bytes)
        if mask.shape != image.shape[1:]:
            raise ValueError(f"mask {mask.shape} and image {image.shape[1:]} differ in size")
        if self.crop_size is not None:
            image, mask = random_crop(image, mask, self.crop_size, self.rng)
        if self.flip and self.rng.random() < 0.5:
            image, mask = hflip(image, mask)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def __call__(self, batch: dict) -> dict:
        pairs = [self.one(i, m) for i, m in zip(batch["image"], batch["mask"], strict=True)]
        images = [p[0] for p in pairs]
        masks = [p[1] for p in pairs]
        if len({m.shape for m in masks}) == 1:
            return {"image": np.stack(images), "mask": np.stack(masks)}
        # Different sizes: Ray Data stores them as variable-shaped tensors.
        return {"image": images, "mask": masks}
