"""Readers for the real dataset layouts, on any URI (local path or s3://).

- VOC2011/2012: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG, class =
  palette index, 255 = void), `ImageSets/Segmentation/<split>.txt`.
- SBD: `dataset/img/<id>.jpg`, `dataset/cls/<id>.mat` (`GTcls.Segmentation`),
  `dataset/<split>.txt`.
- Any tree of images under a prefix (`fcn.images.IMAGE_EXTENSIONS`, nested, any case), and
  rasters (`RASTER_EXTENSIONS`), which ingest keeps as references.

PNG masks are decoded by `fcn.images.decode_mask`; SBD's MATLAB masks here, to the same
H x W uint8 array.

Listing only builds records (URIs); reading and checking bytes is the ingest job's work, so a
missing file shows up there as an error row, not as a crash here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import scipy.io

from fcn import storage
from fcn.engine import images

VOC_SPLITS = ("train", "val")  # trainval is their union; listing it too would duplicate rows
SBD_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Record:
    """One input image, its mask (None for unlabeled images) and where it belongs."""

    image_uri: str
    mask_uri: str | None
    split: str
    source: str  # "voc" | "sbd" | "unlabeled"
    image_id: str


def read_ids(uri: str) -> list[str]:
    """Ids from a list file: first token of each non-empty line (VOC `Main/` lists add a flag)."""
    ids = []
    for line in storage.read_text(uri).splitlines():
        parts = line.split()
        if parts and not parts[0].startswith("#"):
            ids.append(parts[0])
    return ids


def voc_record(root: str, image_id: str, split: str) -> Record:
    return Record(
        image_uri=storage.join(root, f"JPEGImages/{image_id}.jpg"),
        mask_uri=storage.join(root, f"SegmentationClass/{image_id}.png"),
        split=split,
        source="voc",
        image_id=image_id,
    )


def sbd_record(root: str, image_id: str, split: str) -> Record:
    return Record(
        image_uri=storage.join(root, f"dataset/img/{image_id}.jpg"),
        mask_uri=storage.join(root, f"dataset/cls/{image_id}.mat"),
        split=split,
        source="sbd",
        image_id=image_id,
    )


def voc_split_uri(root: str, split: str) -> str:
    return storage.join(root, f"ImageSets/Segmentation/{split}.txt")


def sbd_split_uri(root: str, split: str) -> str:
    return storage.join(root, f"dataset/{split}.txt")


def list_images(uri: str, split: str = "unlabeled", source: str = "unlabeled") -> list[Record]:
    """Every image (`fcn.images.IMAGE_EXTENSIONS`) and raster (`RASTER_EXTENSIONS`) under
    `uri`, any depth, any extension case; id = relative key.

    The id keeps the extension so `a.jpg` and `a.png` in one folder stay distinct rows.
    """
    kinds = images.IMAGE_EXTENSIONS + images.RASTER_EXTENSIONS
    return [
        Record(f.uri, None, split, source, storage.relative_key(uri, f.uri))
        for f in storage.list_files(uri, extensions=kinds)
    ]


def decode_sbd_mask(data: bytes, max_pixels: int = images.DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An SBD `cls/*.mat` -> H x W uint8 class indices (`GTcls.Segmentation`), the array
    `fcn.images.decode_mask` gives for a PNG; `images.BadImage` for an unusable file.

    MATLAB files have no header to size them by, so the pixel cap is checked after loading.
    """
    if not data:
        raise images.BadImage("empty file (0 bytes)", "empty")
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except Exception as err:  # any parser failure on untrusted bytes is a bad file
        raise images.BadImage(f"not a MATLAB file: {type(err).__name__}: {err}") from None
    if "GTcls" not in mat:
        raise images.BadImage("no GTcls struct in .mat file")
    segmentation = np.asarray(getattr(mat["GTcls"], "Segmentation", None))
    if segmentation.ndim != 2:
        raise images.BadImage(f"GTcls.Segmentation has shape {segmentation.shape}; expected H x W")
    if segmentation.size > max_pixels:
        raise images.BadImage(
            f"{segmentation.shape[1]}x{segmentation.shape[0]} pixels exceeds --max-pixels "
            f"{max_pixels}",
            "too_large",
        )
    if segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255):
        raise images.BadImage("GTcls.Segmentation values outside 0..255")
    return segmentation.astype(np.uint8)
