"""Validation of one record: the bytes read for an image (and its mask) -> a dataset row, or
an error row saying why not. An unlabeled raster becomes a reference row from its header.

Pure functions of bytes, unit-testable without Ray or storage. Images and masks go through
`fcn.engine.images`, the codec training, evaluation and segmentation use, so what ingest
accepts they can decode, and `height`/`width` are the size as displayed (EXIF orientation
applied): a mask must match the picture people drew it on.
"""

from __future__ import annotations

import numpy as np

from fcn import storage
from fcn.data import voc
from fcn.engine import images
from fcn.engine.classes import VOID

# What the shard reader passes instead of bytes for an unlabeled raster (never read whole).
RASTER = object()


class Rejected(Exception):
    """An input that cannot become a row: `reason` is one of `fcn.data.contract.REASONS`."""

    def __init__(self, reason: str, uri: str, detail: str):
        super().__init__(f"{reason}: {detail} ({uri})")
        self.reason, self.uri, self.detail = reason, uri, detail


# Codec refusal (`fcn.engine.images.BadImage.reason`) -> the error row's reason, per input kind.
_IMAGE_REASONS = {
    "empty": "empty_image",
    "corrupt": "corrupt_image",
    "truncated": "truncated_image",
    "too_large": "decompression_bomb",
    "unsupported": "unsupported_image",
}
# A mask is the label file: any defect in it makes it unusable, whatever the kind.
_MASK_REASONS = {"empty": "empty_mask", "too_large": "decompression_bomb"}


def check_image(data: bytes, uri: str, max_pixels: int) -> tuple[int, int]:
    """Decode the whole image as training will; return (height, width) as displayed (EXIF
    orientation applied) or raise Rejected."""
    try:
        return images.verify_image(data, max_pixels)
    except images.BadImage as err:
        raise Rejected(_IMAGE_REASONS[err.reason], uri, str(err)) from None


def decode_mask(data: bytes, uri: str, source: str, max_pixels: int) -> np.ndarray:
    """Mask bytes of `source` ("voc": palette/gray PNG, "sbd": .mat) -> H x W uint8."""
    try:
        if source == "sbd":
            return voc.decode_sbd_mask(data, max_pixels)
        return images.decode_mask(data, max_pixels)
    except images.BadImage as err:
        raise Rejected(_MASK_REASONS.get(err.reason, "corrupt_mask"), uri, str(err)) from None


def check_mask(mask: np.ndarray, uri: str, height: int, width: int, num_classes: int) -> None:
    if mask.shape != (height, width):
        raise Rejected(
            "mask_size_mismatch",
            uri,
            f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {width}x{height} (WxH) as "
            "displayed (EXIF orientation applied)",
        )
    counts = np.bincount(mask.ravel(), minlength=256)  # ~20x faster than np.unique
    values = np.flatnonzero(counts)
    bad = values[(values >= num_classes) & (values != VOID)]
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:8].tolist())
        raise Rejected(
            "bad_label_values",
            uri,
            f"values {shown} outside 0..{num_classes - 1} and {VOID} (void)",
        )


def validate_record(
    record: voc.Record,
    image: bytes | BaseException,
    mask: bytes | BaseException | None,
    num_classes: int,
    max_pixels: int,
) -> dict:
    """A dataset row for `record` (`fcn.data.contract.SCHEMA`'s fields), or raise Rejected.

    `image` / `mask` are the bytes read, or the exception the read raised.
    """
    if isinstance(image, BaseException):
        raise _read_failure(image, record.image_uri, "image")
    height, width = check_image(image, record.image_uri, max_pixels)
    mask_png = None
    if record.mask_uri is not None:
        if isinstance(mask, BaseException) or mask is None:
            raise _read_failure(mask, record.mask_uri, "mask")
        labels = decode_mask(mask, record.mask_uri, record.source, max_pixels)
        check_mask(labels, record.mask_uri, height, width, num_classes)
        mask_png = images.encode_mask(labels)
    return _row(record, image, mask_png, height, width)  # the original bytes, never re-encoded


def validate_raster(record: voc.Record) -> dict:
    """A row for an unlabeled raster (`images.is_raster`): a reference, not bytes. Only its
    header is read (size, bands, pixel type), never its pixels: a 20,000^2 GeoTIFF stays in
    the bucket, and whoever segments it reads it window by window from `uri`, each window
    under the pixel cap (fcn.engine.rasters). `image` is null; raise Rejected if unusable."""
    from fcn.engine import rasters  # GDAL and torch: only in a shard that holds a raster

    uri = record.image_uri
    try:
        with rasters.open_raster(uri) as dataset:
            rasters.check_readable(dataset)
            height, width = dataset.height, dataset.width
    except images.BadImage as err:
        raise Rejected(_IMAGE_REASONS[err.reason], uri, str(err)) from None
    except Exception as err:  # GDAL's errors on untrusted bytes, or the object is gone
        if not storage.exists(uri):
            raise Rejected("missing_image", uri, "listed raster does not exist") from None
        raise Rejected("corrupt_image", uri, f"not a readable raster: {err}") from None
    return _row(record, None, None, height, width)  # a reference: the raster is read from `uri`


def _row(record: voc.Record, image: bytes | None, mask: bytes | None, height: int, width: int):
    """A dataset row (`fcn.data.contract.SCHEMA`'s fields) for `record`."""
    return {
        "image_id": record.image_id,
        "split": record.split,
        "source": record.source,
        "image": image,
        "mask": mask,
        "height": height,
        "width": width,
        "uri": record.image_uri,
    }


def _read_failure(err: BaseException | None, uri: str, kind: str) -> Rejected:
    if err is None or isinstance(err, FileNotFoundError):
        return Rejected(f"missing_{kind}", uri, f"listed {kind} does not exist")
    return Rejected("read_error", uri, f"{type(err).__name__}: {err}")


def row_or_error(record, image, mask, num_classes, max_pixels) -> tuple[dict | None, dict | None]:
    """(row, None) for a valid record, (None, error row in ERROR_SCHEMA's fields) otherwise."""
    try:
        if image is RASTER:
            return validate_raster(record), None
        return validate_record(record, image, mask, num_classes, max_pixels), None
    except Rejected as rej:
        uri, reason, detail = rej.uri, rej.reason, rej.detail
    except Exception as err:  # an unforeseen decoder failure is one bad row, not a dead job
        uri, reason, detail = record.image_uri, "unexpected_error", f"{type(err).__name__}: {err}"
    error = {"uri": uri, "reason": reason, "detail": detail, "split": record.split}
    error.update(source=record.source, image_id=record.image_id, image_uri=record.image_uri)
    return None, error
