"""Readers for the real dataset layouts, on any URI (local path or s3://).

- VOC2011/2012: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png` (palette PNG, class =
  palette index, 255 = void), `ImageSets/Segmentation/<split>.txt`.
- SBD: `dataset/img/<id>.jpg`, `dataset/cls/<id>.mat` (`GTcls.Segmentation`),
  `dataset/<split>.txt`.
- Any tree of images under a prefix (jpg/jpeg/png, nested, case-insensitive extensions).

Listing only builds records (URIs); reading and checking bytes is the ingest job's work, so a
missing file shows up there as an error row, not as a crash here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import scipy.io
from PIL import Image

from fcn import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
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


def list_voc(root: str, splits: tuple[str, ...] = VOC_SPLITS) -> list[Record]:
    """Records for each id of each VOC segmentation list, in list order."""
    return [
        voc_record(root, image_id, split)
        for split in splits
        for image_id in read_ids(voc_split_uri(root, split))
    ]


def list_sbd(root: str, splits: tuple[str, ...] = SBD_SPLITS) -> list[Record]:
    """Records for each id of each SBD list (`dataset/train.txt`, `dataset/val.txt`)."""
    return [
        sbd_record(root, image_id, split)
        for split in splits
        for image_id in read_ids(sbd_split_uri(root, split))
    ]


def list_images(uri: str, split: str = "unlabeled", source: str = "unlabeled") -> list[Record]:
    """Every jpg/jpeg/png under `uri`, any depth, any extension case; id = relative key.

    The id keeps the extension so `a.jpg` and `a.png` in one folder stay distinct rows.
    """
    return [
        Record(f.uri, None, split, source, storage.relative_key(uri, f.uri))
        for f in storage.list_files(uri, extensions=IMAGE_EXTENSIONS)
    ]


def decode_png_mask(data: bytes) -> np.ndarray:
    """A label PNG -> H x W uint8 class indices.

    VOC palette PNGs (mode P): the palette index is the class, so the raw indices are the
    labels and the colors are ignored. Single-channel PNGs (mode L) hold the class directly.
    """
    with Image.open(io.BytesIO(data)) as im:
        if im.mode not in ("P", "L"):
            raise ValueError(f"mask PNG has mode {im.mode}; expected palette (P) or gray (L)")
        return np.array(im, dtype=np.uint8)


decode_voc_mask = decode_png_mask


def decode_sbd_mask(data: bytes) -> np.ndarray:
    """An SBD `cls/*.mat` -> H x W uint8 class indices (`GTcls.Segmentation`)."""
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat:
        raise ValueError("no GTcls struct in .mat file")
    segmentation = np.asarray(mat["GTcls"].Segmentation)
    if segmentation.ndim != 2:
        raise ValueError(f"GTcls.Segmentation has shape {segmentation.shape}; expected H x W")
    if segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255):
        raise ValueError("GTcls.Segmentation values outside 0..255")
    return segmentation.astype(np.uint8)


def encode_mask(mask: np.ndarray) -> bytes:
    """H x W uint8 class indices -> single-channel PNG (the Parquet `mask` cell).

    compress_level=1: masks are flat and compress well anyway; level 1 encodes ~1.6x faster.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be H x W uint8, got {mask.shape} {mask.dtype}")
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, "PNG", compress_level=1)
    return buf.getvalue()
