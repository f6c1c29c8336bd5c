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
- EXIF orientation is applied first: the mask has the size and orientation of the image as
  viewers display it, so the two overlay. For a photo stored sideways with orientation 6 or
  8 that means width and height swap against the stored pixel array. The mask PNG carries
  no EXIF, and a mask is read as stored (label PNGs are drawn on the displayed image).

Masks are single-channel PNGs: pixel value = class index, 255 = void. Masks a job writes for
people are palette PNGs with the class list's colors (VOC colormap by default), so the PNG is
both the raw class map and a picture; the dataset's mask cells may be plain gray (`L`).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MASK_EXTENSION = ".png"
# Rasters (GeoTIFF, COG) are read window by window (fcn.engine.rasters), never decoded whole;
# their masks are GeoTIFFs too, keeping the georeference.
RASTER_EXTENSIONS = (".tif", ".tiff")
RASTER_MASK_EXTENSION = ".tif"


def is_raster(key: str) -> bool:
    """Whether `key` (a path, key or URI) names a raster: by its extension, any case."""
    return key.lower().endswith(RASTER_EXTENSIONS)


# Ingest's cap: rows read back from an ingested dataset were checked against it already.
DEFAULT_MAX_PIXELS = 64_000_000
# Modes Pillow converts to RGB without losing meaning (alpha is dropped).
_TO_RGB = {"RGB", "RGBA", "RGBX", "RGBa", "L", "LA", "La", "1", "P", "PA", "CMYK", "YCbCr"}
_INT_GRAY = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_MASK_MODES = {"P", "L"}
# EXIF orientation -> the transpose that shows the stored pixels as viewers display them
# (the table of ImageOps.exif_transpose; 5-8 swap width and height).
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = {5, 6, 7, 8}


class BadImage(ValueError):
    """An input that cannot be decoded; the message is the reason a user reads.

    `reason` sorts it for callers that count refusals (ingest's error rows): `empty`,
    `corrupt`, `truncated`, `too_large` (over the pixel cap) or `unsupported` (animated, or a
    pixel mode with no reading).
    """

    def __init__(self, message: str, reason: str = "corrupt"):
        super().__init__(message)
        self.reason = reason


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Encoded bytes -> uint8 RGB `H x W x 3` in display orientation; `BadImage` if refused."""
    with warnings.catch_warnings():
        _quiet()
        image = _open_image(data, max_pixels)
        _load(image)
        method = _ORIENT.get(_orientation(image))
        if method is not None:
            image = image.transpose(method)
        return _to_rgb(image)


def verify_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) as displayed, after every check `decode_image` makes; `BadImage` if
    refused. Every pixel is decoded (the only way to find a truncated body), but no RGB array
    is built: ingest's check, so that whatever ingest accepts, training can decode."""
    with warnings.catch_warnings():
        _quiet()
        image = _open_image(data, max_pixels)
        _load(image)
        width, height = image.size
        if _orientation(image) in _SWAPS_SIDES:
            return width, height
        return height, width


def decode_mask(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Single-channel (palette or gray) PNG bytes -> H x W uint8 class indices, 255 = void.

    The palette's colors are ignored: the index is the class. No EXIF orientation (masks are
    stored as displayed). `BadImage` for empty, corrupt, oversized or multi-channel masks.
    """
    with warnings.catch_warnings():
        _quiet()
        image = _open(data, max_pixels)
        if image.mode not in _MASK_MODES:
            raise BadImage(
                f"mask PNG has mode {image.mode}; expected palette (P) or gray (L)",
                "unsupported",
            )
        _load(image)
        return np.array(image, dtype=np.uint8)


def encode_mask(mask: np.ndarray, palette: np.ndarray | None = None) -> bytes:
    """Class map `H x W` (values < 256) -> PNG bytes: with `palette` (256 x 3 uint8) a palette
    PNG (a picture in the class colors), without one a plain gray PNG (a dataset cell)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is H x W, got shape {mask.shape}")
    image = Image.fromarray(mask.astype(np.uint8, copy=False))  # mode L ...
    if palette is not None:
        image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # ... -> P
    buffer = io.BytesIO()
    # Level 1: ~1.6x faster than the default and masks (flat regions) still compress well.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _quiet() -> None:
    # Pillow warns (not raises) between 89 and 179 MP; our own max_pixels check decides.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.simplefilter("ignore", UserWarning)  # palette-transparency notes


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Header checks only, before any pixel is decoded: empty, unknown, too many pixels,
    animated. Any parser failure on untrusted bytes is a bad file, never a crash."""
    if not data:
        raise BadImage("empty file (0 bytes)", "empty")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(f"not an image: Pillow cannot identify these {len(data)} bytes") from None
    except Image.DecompressionBombError as err:
        raise BadImage(f"refused as a decompression bomb: {err}", "too_large") from None
    except Exception as err:
        raise BadImage(f"corrupt image header: {type(err).__name__}: {err}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise BadImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise BadImage(
            f"{width}x{height} = {width * height} pixels exceeds --max-pixels {max_pixels}",
            "too_large",
        )
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise BadImage(
            f"animated {image.format} with {frames} frames: one mask per image", "unsupported"
        )
    return image


def _open_image(data: bytes, max_pixels: int) -> Image.Image:
    image = _open(data, max_pixels)
    if image.mode not in _TO_RGB and image.mode not in _INT_GRAY:
        raise BadImage(
            f"unsupported pixel mode {image.mode!r} (no RGB reading for it)", "unsupported"
        )
    return image


def _load(image: Image.Image) -> None:
    # Decoding every pixel is the only way to catch a truncated or damaged body.
    try:
        image.load()
    except Exception as err:
        reason = "truncated" if "truncat" in str(err).lower() else "corrupt"
        raise BadImage(f"truncated or corrupt {image.format} data: {err}", reason) from None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1 = as stored), read as `ImageOps.exif_transpose` reads it."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # unreadable EXIF: show the pixels as stored, as viewers do
        return 1


def _to_rgb(image: Image.Image) -> np.ndarray:
    # np.array, not np.asarray: a writable array (torch warns on read-only ones).
    if image.mode == "RGB":
        return np.array(image, dtype=np.uint8)
    if image.mode in _TO_RGB:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    # 16-bit (or 32-bit int) grayscale: full range to 0-255, as viewers show it.
    gray = np.asarray(image).astype(np.float64)
    top = 65535.0 if gray.max(initial=0) <= 65535 else float(gray.max())
    gray8 = np.clip(np.rint(gray * (255.0 / top)), 0, 255).astype(np.uint8)
    return np.repeat(gray8[..., None], 3, axis=-1)
