"""Small Parquet datasets in the ingest contract (ARCHITECTURE.md), written directly with pyarrow.

Unit tests of the training side use these instead of running the ingest job: same columns and
layout (`<root>/<split>/*.parquet`), images rendered by the synthetic generator. Also small
models: seeded random FCNs, saved as checkpoints or registered as a first champion.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fcn import storage
from fcn.data import synthetic, voc

SCHEMA = pa.schema([
    ("image_id", pa.string()), ("split", pa.string()), ("source", pa.string()),
    ("image", pa.binary()), ("mask", pa.binary()), ("height", pa.int32()),
    ("width", pa.int32()), ("uri", pa.string()),
])  # fmt: skip


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def write_split(root: str, split: str, count: int, size=(40, 56), classes=(1, 2), seed=0,
                files: int = 2) -> list[str]:  # fmt: skip
    """Write `count` labeled images of `size` (h, w, or a (min, max) range if a list) to
    `<root>/<split>/part-*.parquet`; returns their ids in row order."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        h, w = (int(rng.integers(size[0], size[1] + 1)),) * 2 if isinstance(size, list) else size
        image, label = synthetic.render_scene(rng, h, w, tuple(classes))
        label = synthetic.void_border(label, 1)
        image_id = f"{split}_{seed}_{i:04d}"
        rows.append({
            "image_id": image_id, "split": split, "source": "synthetic",
            "image": synthetic.encode_jpeg(image), "mask": png(label), "height": h, "width": w,
            "uri": f"memory://{image_id}.jpg",
        })  # fmt: skip
    chunks = np.array_split(np.arange(count), files)
    for n, chunk in enumerate(chunks):
        table = pa.Table.from_pylist([rows[i] for i in chunk], schema=SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        storage.write_bytes(storage.join(root, f"{split}/part-{n:05d}.parquet"), buffer.getvalue())
    return [r["image_id"] for r in rows]


def varied_model(num_classes: int, name: str = "fcn-alexnet", biases: bool = False, **options):
    """A small FCN (FCN-AlexNet by default) whose argmax varies over the image: a fresh model's
    score layers are zero, so it would paint every pixel class 0 and prove nothing. `biases`:
    random biases too (deep thin VGG nets otherwise still paint one class); `options` go to
    build_model (`width`)."""
    import torch

    from fcn.engine.models import build_model

    torch.manual_seed(0)
    model = build_model(name, num_classes=num_classes, **options)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if biases and module.bias is not None:
                torch.nn.init.normal_(module.bias, std=0.1)
    return model.eval()


def list_voc(root: str, splits: tuple[str, ...] = voc.VOC_SPLITS) -> list[voc.Record]:
    """Records for each id of each VOC segmentation list, in list order (what ingest plans)."""
    return [
        voc.voc_record(root, image_id, split)
        for split in splits
        for image_id in voc.read_ids(voc.voc_split_uri(root, split))
    ]


def list_sbd(root: str, splits: tuple[str, ...] = voc.SBD_SPLITS) -> list[voc.Record]:
    """Records for each id of each SBD list (`dataset/train.txt`, `dataset/val.txt`)."""
    return [
        voc.sbd_record(root, image_id, split)
        for split in splits
        for image_id in voc.read_ids(voc.sbd_split_uri(root, split))
    ]


# 50 cm pixels in UTM 33N: a georeference a mask must keep
RASTER_CRS_EPSG = 32633
RASTER_TRANSFORM = (0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0)


def geotiff(path, height: int, width: int, bands: int = 3, dtype=np.uint8) -> str:
    """A tiled, LZW-compressed GeoTIFF of random pixels at `path` (256 x 256 blocks)."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    top = 256 if dtype == np.uint8 else 65536
    pixels = np.random.default_rng(height * width + bands).integers(0, top, (bands, height, width))
    with rasterio.open(
        path, "w", driver="GTiff", height=height, width=width, count=bands, dtype=dtype,
        crs=CRS.from_epsg(RASTER_CRS_EPSG), transform=Affine(*RASTER_TRANSFORM), tiled=True,
        blockxsize=256, blockysize=256, compress="lzw",
    ) as out:  # fmt: skip
        out.write(pixels.astype(dtype))
    return str(path)


def raster_rgb(path) -> np.ndarray:
    """The whole raster at `path` as the models read it: H x W x 3 (gray repeated)."""
    import rasterio

    with rasterio.open(path) as src:
        data = np.moveaxis(src.read(), 0, -1)
    return np.repeat(data, 3, -1) if data.shape[-1] == 1 else data[..., :3]


def register_random_champion(path, model_name: str, experiment: str, classes, width: float):
    """Version 1 and champion of `model_name` on the MLflow server of MLFLOW_TRACKING_URI,
    without a training: a seeded random FCN-32s of `width` with `classes` (a ClassList),
    saved at `path` and registered as imported weights are (no val digest, no mean IU), so
    the first trained version replaces it by the registry's rule."""
    import hashlib

    import torch

    from fcn import tracking
    from fcn.engine import checkpoint
    from fcn.engine.models import build_model

    torch.manual_seed(0)
    model = build_model("fcn32s", num_classes=classes.num_classes, width=width)
    config = {
        "model": "fcn32s", "num_classes": classes.num_classes, "width": width,
        "preprocessing": "torchvision", "classes": classes.to_dict(),
        "weights_source": "random init (test)", "weights_format": "state_dict",
    }  # fmt: skip
    checkpoint.save(model.state_dict(), config, str(path))
    config["weights_sha256"] = hashlib.sha256((path / "model.pt").read_bytes()).hexdigest()
    version, decision = tracking.register_imported(
        str(path), config, model_name, experiment, champion=True
    )
    assert version == "1" and decision.is_champion
