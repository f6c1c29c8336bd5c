"""The one image codec: bytes -> RGB array, mask PNG <-> class map, the file extensions.

Used by ingest, training, evaluation and segmentation alike, so an image is decoded the same
way (orientation, pixel cap, modes) wherever it is read.

Decoding policy (what the nightly job does with whatever lands in a bucket):
- Refused with a clear reason (`BadImage`): empty files, bytes Pillow cannot identify (text
  or HTML with an image extension), truncated or corrupt image data, animated images (GIF,
  APNG, WebP with more than one frame: one mask cannot cover several frames), images over
  `max_pixels` (decompression bombs: checked from the header, before any pixel is decoded)
  and pixel modes with no sensible RGB reading (float images).
- Converted, then segmented: grayscale (`L`, `1`), palette (`P`), with alpha (`RGBA`, `LA`,
  `PA`: the alpha channel is dropped, colors kept), `CMYK`, `YCbCr`, and 16/32-bit integer
  grayscale (`I;16*`, `I`: scaled to 8 bits, 65535 -> 255). Any H, W >= 1 is valid, 1x1
  included (the models take any size).
- EXIF orientation is applied first (`ImageOps.exif_transpose`): the mask has the size and
  orientation of the image as viewers display it, so the two overlay. For a photo stored
  sideways with orientation 6 or 8 that means width and height swap against the stored
  pixel array. The mask PNG carries no EXIF.

Masks are single-channel palette PNGs: pixel value = class index, palette = the class
list's colors (VOC colormap by default), so the PNG is both the raw class map and a picture.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_EXTENSION = ".png"
# Ingest's cap: rows read back from an ingested dataset were checked against it already.
DEFAULT_MAX_PIXELS = 64_000_000
# Modes Pillow converts to RGB without losing meaning (alpha is dropped).
_TO_RGB = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "1", "P", "PA", "CMYK", "YCbCr"}
_INT_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class BadImage(ValueError):
    """An input that cannot be segmented; the message is the manifest's `error` reason."""


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> uint8 RGB `H x W x 3` in display orientation; `BadImage` if refused."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        # Pillow warns (not raises) between 89 and 179 MP; our own max_pixels check decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # palette-transparency notes
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise BadImage(
                f"not an image: Pillow cannot identify these {len(data)} bytes"
            ) from None
        except Image.DecompressionBombError as err:
            raise BadImage(f"refused as a decompression bomb: {err}") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise BadImage(f"corrupt image header: {err}") from None
        width, height = image.size
        if width < 1 or height < 1:
            raise BadImage(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise BadImage(
                f"{width}x{height} = {width * height} pixels exceeds --max-pixels {max_pixels}"
            )
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise BadImage(f"animated {image.format} with {frames} frames: one mask per image")
        try:
            image.load()
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise BadImage(f"truncated or corrupt {image.format} data: {err}") from None
        return _to_rgb(image)


def _to_rgb(image: Image.Image) -> np.ndarray:
    # np.array, not np.asarray: a writable array (torch warns on read-only ones).
    if image.mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if image.mode in _TO_RGB:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if image.mode in _INT_GRAY:
        # 16-bit (or 32-bit int) grayscale: full range to 0-255, as viewers show it.
        gray = np.asarray(image).astype(np.float64)
        top = 65535.0 if gray.max(initial=0) <= 65535 else float(gray.max())
        gray8 = np.clip(np.rint(gray * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray8[..., None], 3, axis=-1)
    raise BadImage(f"unsupported pixel mode {image.mode!r} (no RGB reading for it)")


def decode_mask(data: bytes) -> np.ndarray:
    """Single-channel (palette or gray) PNG bytes -> H x W uint8 class indices, 255 = void."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("P", "L"):
            raise BadImage(f"mask PNG has mode {im.mode}; expected palette (P) or gray (L)")
        return np.array(im, dtype=np.uint8)


def encode_mask(mask: np.ndarray, palette: np.ndarray) -> bytes:
    """Class map `H x W` (values < 256) -> palette PNG bytes with `palette` (256 x 3 uint8)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {mask.shape}")
    image = Image.fromarray(mask.astype(np.uint8, copy=False))  # mode L ...
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # ... -> P
    buffer = io.BytesIO()
    # Level 1: ~1.6x faster than the default and masks (flat regions) still compress well.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
