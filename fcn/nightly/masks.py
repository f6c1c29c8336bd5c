"""Image key -> mask key: where the segment job writes the mask of an object."""

from __future__ import annotations

import posixpath

from fcn.engine.images import MASK_EXTENSION, RASTER_EXTENSIONS, RASTER_MASK_EXTENSION

# The vectorized form of `mask_key`'s test (fcn.nightly.plan maps keys in Arrow)
RASTER_KEY = r"(?i)(" + "|".join(e.replace(".", r"\.") for e in RASTER_EXTENSIONS) + r")$"


def mask_key(image_key: str) -> str:
    """`a/b/photo.JPG` -> `a/b/photo.png`: the image's key without its extension, as PNG; a
    raster's (`scene.tiff`) as GeoTIFF (`scene.tif`), which keeps its georeference."""
    root, ext = posixpath.splitext(image_key)
    return root + (RASTER_MASK_EXTENSION if ext.lower() in RASTER_EXTENSIONS else MASK_EXTENSION)
