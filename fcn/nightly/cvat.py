"""The labeling queue as a CVAT "Segmentation mask 1.1" zip (the Pascal VOC layout), with the
predicted masks as pre-annotations:

    JPEGImages/<id>.jpg                   the image
    SegmentationClass/<id>.png            the predicted mask, palette PNG, value = class
    ImageSets/Segmentation/default.txt    the ids
    labelmap.txt                          `name:R,G,B::` per class, in class order

A labeler fixes the masks in CVAT and exports the task in the same format; that tree ingests
with `jobs/ingest.py --voc <tree> --voc-splits default --classes <classes.json>` (docs/insight.md).
"""

from __future__ import annotations

import io
import re
import zipfile

from PIL import Image

from fcn.engine import images
from fcn.engine.classes import ClassList

JPEG_QUALITY = 95  # only non-JPEG images are re-encoded (VOC's folder holds .jpg files)
SPLIT = "default"  # the split name CVAT writes and reads


def image_id(uri: str) -> str:
    """A file name for `uri`: its key without scheme and extension, folders joined by `__`."""
    key = uri.split("://", 1)[-1].lstrip("/").rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__"))


def labelmap(classes: ClassList) -> str:
    lines = ["# label:color_rgb:parts:actions"]
    pairs = zip(classes.names, classes.colors, strict=True)
    lines += [f"{name}:{','.join(map(str, color))}::" for name, color in pairs]
    return "\n".join(lines) + "\n"


def as_jpeg(data: bytes) -> bytes:
    """JPEG bytes as they are; any other image decoded (EXIF applied, like its mask) and saved
    as JPEG, so `JPEGImages/<id>.jpg` is what it says."""
    if data[:2] == b"\xff\xd8":
        return data
    buffer = io.BytesIO()
    Image.fromarray(images.decode_image(data)).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def export(rows: list[dict], classes: ClassList, image_bytes: dict, mask_bytes: dict) -> bytes:
    """The zip of `rows` (queue rows: `uri`, `mask_uri`), given their image and mask bytes."""
    buffer = io.BytesIO()
    ids = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for row in rows:
            name = image_id(row["uri"])
            ids.append(name)
            archive.writestr(f"JPEGImages/{name}.jpg", as_jpeg(image_bytes[row["uri"]]))
            archive.writestr(f"SegmentationClass/{name}.png", mask_bytes[row["mask_uri"]])
        archive.writestr(f"ImageSets/Segmentation/{SPLIT}.txt", "".join(f"{i}\n" for i in ids))
        archive.writestr("labelmap.txt", labelmap(classes))
    return buffer.getvalue()
