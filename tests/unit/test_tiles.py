"""Tiled inference (fcn.engine.tiles, `predict(tile=...)`): tiles give the whole-image masks
and confidence statistics for every FCN variant; a margin one grid step short of the net's
context seams."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_data import varied_model

from fcn.engine import inference, tiles
from fcn.engine.inference import predict
from fcn.engine.models.preprocess import TORCHVISION

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "fcn-googlenet")


def _model(name: str):
    """A random net whose argmax varies; the VGG16 ones at 1/16 width (CPU time)."""
    options = {"width": 0.0625} if name.startswith("fcn8") or name in ("fcn32s", "fcn16s") else {}
    return varied_model(3, name, biases=True, **options)


def _images(height, width, n=1):
    return np.random.default_rng(height * width).integers(0, 256, (n, height, width, 3), np.uint8)


def test_spans_cover_the_axis_on_the_grid_with_margins():
    for side, margin in ((544, 256), (1824, 256), (1024, 96), (64, 0)):
        for length in (1, 31, side - 1, side, side + 1, 1000, 2049, 4000, 20_000):
            parts = tiles.spans(length, side, margin)
            assert parts[0].keep == 0 and parts[-1].keep_stop == length
            assert parts[0].start == 0 and parts[-1].stop == length
            for prev, nxt in zip(parts, parts[1:], strict=False):
                assert prev.keep_stop == nxt.keep and nxt.start % tiles.GRID == 0
                assert prev.keep_stop <= prev.stop - margin and nxt.keep >= nxt.start + margin
                assert prev.stop - nxt.start == 2 * margin  # overlap: what is needed, no more
            assert all(0 < p.stop - p.start <= side and p.keep < p.keep_stop for p in parts)
            fewer = (length - 2 * margin) / (side - 2 * margin)
            assert len(parts) == 1 or len(parts) - 1 < fewer  # no tile more than needed


@pytest.mark.parametrize("name", VARIANTS)
def test_tiled_equals_whole_for_every_variant(name):
    model = _model(name)
    side = tiles.minimum_side(model)
    images = _images(side + 40, side + 300)  # two tiles or more a side, sizes off the grid
    whole, whole_stats = predict(model, images, TORCHVISION, statistics=True)
    tiled, tiled_stats = predict(model, images, TORCHVISION, statistics=True, tile=side)
    assert len(np.unique(whole)) > 1
    assert np.array_equal(tiled, whole)
    for key, value in whole_stats.items():
        np.testing.assert_allclose(tiled_stats[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (31, 47), (2, 37, 45)])
def test_small_and_odd_sizes_are_whole_images(shape):
    model = _model("fcn-alexnet")
    images = _images(*shape[-2:], n=shape[0] if len(shape) == 3 else 1)
    side = tiles.minimum_side(model)
    whole = predict(model, images, TORCHVISION)
    assert np.array_equal(predict(model, images, TORCHVISION, tile=side), whole)
    assert np.array_equal(predict(model, images, TORCHVISION, tile="auto"), whole)


def test_a_margin_short_of_the_context_shows_a_seam():
    model = _model("fcn-alexnet")
    side = tiles.minimum_side(model)
    images = _images(side, side + 200)
    whole = predict(model, images, TORCHVISION)
    assert np.array_equal(predict(model, images, TORCHVISION, tile=side), whole)
    short = tiles.margin_of(model) - tiles.GRID
    seamed = predict(model, images, TORCHVISION, tile=side, tile_margin=short)
    assert (seamed != whole).any()
    with pytest.raises(ValueError, match="--tile-margin must be a multiple of 32"):
        predict(model, images, TORCHVISION, tile=side, tile_margin=100)


def test_auto_tiles_only_what_exceeds_the_budget():
    model = _model("fcn-alexnet")
    images = _images(400, 1300)
    whole = predict(model, images, TORCHVISION)
    need = tiles.estimate_bytes(model, 400, 1300, 3)
    assert np.array_equal(predict(model, images, TORCHVISION, tile="auto", tile_memory=need), whole)
    small = tiles.estimate_bytes(model, 480, 480, 3)
    assert tiles.auto_side(model, small, 3) < 1300
    assert np.array_equal(
        predict(model, images, TORCHVISION, tile="auto", tile_memory=small), whole
    )


def test_multi_scale_tiles_agree_with_whole_multi_scale():
    model = _model("fcn-alexnet")
    scales = (0.75, 1.0)
    side = tiles.minimum_side(model, min(scales))
    images = _images(300, side + 200)
    whole = predict(model, images, TORCHVISION, scales=scales)
    tiled = predict(model, images, TORCHVISION, scales=scales, tile=side)
    assert (tiled == whole).mean() >= 0.99  # resampling a tile is not exactly a crop of the
    # resampled image: agreement, not identity


def test_a_tile_below_the_minimum_is_refused_with_one_line():
    model = _model("fcn-alexnet")
    with pytest.raises(ValueError, match="too small") as caught:
        predict(model, _images(600, 600), TORCHVISION, tile=100)
    assert "\n" not in str(caught.value)


def test_shift_and_stitch_runs_whole_images_and_refuses_a_tile_size(monkeypatch):
    model = _model("fcn-alexnet")
    images = _images(300, 700)
    seen = []  # shift-and-stitch itself costs 1024 forwards: the net stands in for it here
    monkeypatch.setattr(inference, "dense_logits", lambda m, x: seen.append(x.shape) or m(x))
    tiny = tiles.estimate_bytes(model, 10, 10, 3)
    auto = predict(model, images, TORCHVISION, shift_and_stitch=True, tile="auto", tile_memory=tiny)
    assert seen == [(1, 3, 300, 700)]
    assert np.array_equal(auto, predict(model, images, TORCHVISION))
    with pytest.raises(ValueError, match="--tile none or auto"):
        predict(model, images, TORCHVISION, shift_and_stitch=True, tile=480)
