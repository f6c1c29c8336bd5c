"""Rasters larger than memory (fcn.engine.rasters): the mask of a tiled GeoTIFF, segmented
window by window, is `predict` on the whole image, georeferenced and coloured like the input;
no window larger than a tile is ever read; bad rasters are refused in one line; a failure
leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import tempfile

import numpy as np
import pytest
import rasterio
from helpers_data import RASTER_TRANSFORM, geotiff, raster_rgb, varied_model
from rasterio.crs import CRS
from rasterio.transform import Affine

from fcn.config.tiling import Tiling
from fcn.engine import rasters, tiles
from fcn.engine.classes import default_classes
from fcn.engine.images import BadImage
from fcn.engine.inference import predict
from fcn.engine.models.preprocess import TORCHVISION

CLASSES = default_classes(3)
TRANSFORM = Affine(*RASTER_TRANSFORM)
# Tiles of 640 on fcn-alexnet (margin 224) step 192: 680 x 1000 is 2 x 3 tiles; its minimum
# tile (480) would step 32 and run a hundred forwards.
SIDE = 640
HEIGHT, WIDTH = 680, 1000


@pytest.fixture(scope="module")
def model():
    """A random FCN-AlexNet whose argmax varies."""
    return varied_model(3, biases=True)


def _temporaries():
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("fcn-mask-")}


def test_the_mask_is_the_whole_image_mask_georeferenced_and_coloured(model, tmp_path):
    src = geotiff(tmp_path / "scene.tif", HEIGHT, WIDTH)
    result = rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                                    tiling=Tiling(SIDE))  # fmt: skip
    whole = predict(model, raster_rgb(src)[None], TORCHVISION)[0]
    assert len(np.unique(whole)) > 1 and result.tiles == 6
    with rasterio.open(tmp_path / "m.tif") as mask:
        assert np.array_equal(mask.read(1), whole)
        assert (mask.height, mask.width, mask.count, mask.dtypes[0]) == (HEIGHT, WIDTH, 1, "uint8")
        assert mask.crs == CRS.from_epsg(32633) and mask.transform == TRANSFORM
        assert mask.block_shapes == [(256, 256)] and mask.profile["tiled"]
        assert mask.compression.name == "deflate"
        colormap = mask.colormap(1)
    for index, color in enumerate(CLASSES.colors):
        assert colormap[index][:3] == color
    assert (result.height, result.width) == (HEIGHT, WIDTH)
    assert result.class_pixels == tuple(np.bincount(whole.ravel(), minlength=3))


@pytest.mark.parametrize("bands", [1, 4])
def test_gray_and_alpha_rasters_are_read_as_rgb(model, tmp_path, bands):
    src = geotiff(tmp_path / "in.tif", 300, 500, bands=bands)
    rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                           tiling=Tiling(tiles.minimum_side(model)))  # fmt: skip
    whole = predict(model, raster_rgb(src)[None], TORCHVISION)[0]
    with rasterio.open(tmp_path / "m.tif") as mask:
        assert np.array_equal(mask.read(1), whole)


@pytest.mark.parametrize(
    ("bands", "dtype", "says"), [(3, np.uint16, "8-bit"), (2, np.uint8, "2 bands")]
)
def test_rasters_with_no_rgb_reading_are_refused_in_one_line(model, tmp_path, bands, dtype, says):
    src = geotiff(tmp_path / "in.tif", 64, 64, bands=bands, dtype=dtype)
    with pytest.raises(BadImage, match=says) as caught:
        rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES)
    assert "\n" not in str(caught.value) and caught.value.reason == "unsupported"
    assert not (tmp_path / "m.tif").exists()


def test_a_window_over_the_pixel_cap_is_refused(tmp_path):
    src = geotiff(tmp_path / "in.tif", 100, 100)
    with rasters.open_raster(src) as dataset:
        assert rasters.read_window(dataset, (0, 10), (0, 10), max_pixels=100).shape == (10, 10, 3)
        with pytest.raises(BadImage, match="max-pixels") as caught:
            rasters.read_window(dataset, (0, 11), (0, 10), max_pixels=100)
    assert caught.value.reason == "too_large"


class _Recording:
    """A dataset that records the shape of every window read from it."""

    def __init__(self, dataset, shapes):
        self._dataset, self._shapes = dataset, shapes

    def read(self, *args, window=None, **kwargs):
        data = self._dataset.read(*args, window=window, **kwargs)
        self._shapes.append(data.shape[-2:])
        return data

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._dataset.close()


def test_no_window_larger_than_a_tile_is_read(model, tmp_path, monkeypatch):
    src = geotiff(tmp_path / "in.tif", HEIGHT, WIDTH)
    shapes = []
    opened = rasters.open_raster
    monkeypatch.setattr(rasters, "open_raster", lambda uri: _Recording(opened(uri), shapes))
    result = rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                                    tiling=Tiling(SIDE))  # fmt: skip
    assert len(shapes) == result.tiles
    assert all(h <= SIDE and w <= SIDE for h, w in shapes)


def test_a_failure_midway_leaves_no_mask_and_no_temporary_file(model, tmp_path, monkeypatch):
    src = geotiff(tmp_path / "in.tif", HEIGHT, WIDTH)
    before = _temporaries()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory on the third tile")
        return predict(*args, **kwargs)

    monkeypatch.setattr(rasters.inference, "predict", failing)
    with pytest.raises(RuntimeError, match="third tile"):
        rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                               tiling=Tiling(SIDE))  # fmt: skip
    assert len(calls) == 3
    assert not (tmp_path / "m.tif").exists()
    assert os.listdir(tmp_path) == ["in.tif"]
    assert _temporaries() == before


def test_a_killed_writers_temporary_mask_is_removed_by_the_next_raster(model, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names no process now
    folder = tempfile.gettempdir()
    orphan = os.path.join(folder, f"fcn-mask-{dead.pid}-killed.tif")
    live = os.path.join(folder, f"fcn-mask-{os.getppid()}-running.tif")
    other = os.path.join(folder, f"fcn-mask-{dead.pid}-notes.txt")
    for path in (orphan, live, other):
        with open(path, "wb") as f:
            f.write(b"partial")
    try:
        src = geotiff(tmp_path / "in.tif", 300, 500)
        rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                               tiling=Tiling(SIDE))  # fmt: skip
        assert not os.path.exists(orphan)
        assert os.path.exists(live) and os.path.exists(other)  # a live writer's, not a mask
    finally:
        for path in (orphan, live, other):
            if os.path.exists(path):
                os.unlink(path)


def test_memory_is_released_once_a_tile(model, tmp_path, monkeypatch):
    released = []
    monkeypatch.setattr(rasters, "release_free_memory", lambda: released.append(1))
    src = geotiff(tmp_path / "in.tif", HEIGHT, WIDTH)
    result = rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                                    tiling=Tiling(SIDE))  # fmt: skip
    assert len(released) == result.tiles == 6


def test_a_remote_uri_reads_and_writes_through_fcn_storage(model, tmp_path):
    import fsspec

    src = geotiff(tmp_path / "in.tif", 300, 500)
    memory = fsspec.filesystem("memory")
    memory.pipe_file("/rasters/in.tif", (tmp_path / "in.tif").read_bytes())
    try:
        rasters.segment_raster(model, TORCHVISION, "memory://rasters/in.tif",
                               "memory://rasters/out/m.tif", CLASSES,
                               tiling=Tiling(tiles.minimum_side(model)))  # fmt: skip
        (tmp_path / "m.tif").write_bytes(memory.cat_file("/rasters/out/m.tif"))
    finally:
        memory.rm("/rasters", recursive=True)
    whole = predict(model, raster_rgb(src)[None], TORCHVISION)[0]
    with rasterio.open(tmp_path / "m.tif") as mask:
        assert np.array_equal(mask.read(1), whole) and mask.crs == CRS.from_epsg(32633)


def test_a_tile_below_the_minimum_is_refused_in_one_line(model, tmp_path):
    src = geotiff(tmp_path / "in.tif", 64, 64)
    with pytest.raises(ValueError, match="too small.*at least 480") as caught:
        rasters.segment_raster(model, TORCHVISION, src, str(tmp_path / "m.tif"), CLASSES,
                               tiling=Tiling(300))  # fmt: skip
    assert "\n" not in str(caught.value) and not (tmp_path / "m.tif").exists()


@pytest.mark.parametrize("n", [2, 3, 5])
def test_bands_segmented_apart_and_merged_are_the_whole_mask(model, tmp_path, n):
    src = geotiff(tmp_path / "in.tif", 1300, 700)
    whole = predict(model, raster_rgb(src)[None], TORCHVISION)[0]
    parts, tops, written = [], [], 0
    for k in range(n):
        part = str(tmp_path / f"band-{k}.tif")
        done = rasters.segment_raster(model, TORCHVISION, src, part, CLASSES, Tiling(SIDE),
                                      band=(k, n))  # fmt: skip
        assert done.raster_height == 1300 and done.width == 700
        if done.height:  # 1300 rows in tiles of 640 step 192: 5 rows of tiles
            parts.append(part)
            tops.append(done.top)
            written += sum(done.class_pixels)
        else:
            assert not os.path.exists(part)
    assert tops == sorted(tops) and tops[0] == 0 and len(parts) == min(n, 5)
    assert written == whole.size  # every pixel counted once
    rasters.merge_bands(src, parts, str(tmp_path / "m.tif"), CLASSES)
    with rasterio.open(tmp_path / "m.tif") as mask:
        assert np.array_equal(mask.read(1), whole)
        assert mask.crs == CRS.from_epsg(32633) and mask.transform == TRANSFORM


def test_a_merge_missing_a_band_writes_nothing(model, tmp_path):
    src = geotiff(tmp_path / "in.tif", 1300, 700)
    part = str(tmp_path / "band-0.tif")
    rasters.segment_raster(model, TORCHVISION, src, part, CLASSES, Tiling(SIDE), band=(0, 2))
    with pytest.raises(ValueError, match="cover"):
        rasters.merge_bands(src, [part], str(tmp_path / "m.tif"), CLASSES)
    assert not (tmp_path / "m.tif").exists()
