"""Image key -> mask key: where the segment job writes the mask of an object."""

from __future__ import annotations

import posixpath

from fcn.engine.images import MASK_EXTENSION


def mask_key(image_key: str) -> str:
    """`a/b/photo.JPG` -> `a/b/photo.png`: the image's key without its extension, as PNG."""
    root, _ext = posixpath.splitext(image_key)
    return root + MASK_EXTENSION
