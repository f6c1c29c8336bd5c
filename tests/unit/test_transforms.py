"""Decode, normalize and the joint image/mask crop and flip (fcn/data/transforms.py)."""

import numpy as np
import pytest
from helpers_data import png

from fcn.data import transforms
from fcn.engine import images
from fcn.engine.models import preprocess

TV = preprocess.TORCHVISION


def _pair(h, w):
    """An image whose red channel is the column index and a mask equal to it (mod 200)."""
    cols = np.tile(np.arange(w, dtype=np.uint8) % 200, (h, 1))
    image = np.stack([cols, np.zeros_like(cols), np.full_like(cols, 7)], axis=-1)
    return image, cols.copy()


def test_decode_round_trip():
    image, mask = _pair(5, 9)
    assert np.array_equal(images.decode_image(png(image)), image)
    assert np.array_equal(images.decode_mask(png(mask)), mask)


def test_decode_mask_refuses_rgb():
    with pytest.raises(ValueError, match="mode RGB"):
        images.decode_mask(png(np.zeros((4, 4, 3), np.uint8)))


def test_normalize_follows_spec():
    image = np.full((2, 3, 3), 255, np.uint8)
    image[..., 2] = 0
    caffe = transforms.normalize(image, preprocess.CAFFE)
    assert caffe.shape == (3, 2, 3) and caffe.dtype == np.float32
    # BGR order: channel 0 is blue (0) minus the Caffe blue mean.
    assert np.allclose(caffe[0], -104.00698793, atol=1e-4)
    assert np.allclose(caffe[2], 255 - 122.67891434, atol=1e-4)
    tv = transforms.normalize(image, TV)
    assert np.allclose(tv[0], (1 - 0.485) / 0.229, atol=1e-5)


def test_random_crop_keeps_image_and_mask_aligned():
    image, mask = _pair(30, 50)
    chw = image.transpose(2, 0, 1).astype(np.float32)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ci, cm = transforms.random_crop(chw, mask, 16, rng)
        assert ci.shape == (3, 16, 16) and cm.shape == (16, 16)
        assert np.array_equal(ci[0], cm.astype(np.float32))


def test_random_crop_pads_image_with_zero_and_mask_with_void():
    image = np.ones((3, 4, 6), np.float32)
    mask = np.zeros((4, 6), np.uint8)
    ci, cm = transforms.random_crop(image, mask, 8, np.random.default_rng(0))
    assert ci.shape == (3, 8, 8) and cm.shape == (8, 8)
    assert (cm == 255).sum() == 64 - 24 and (cm == 0).sum() == 24
    assert np.array_equal(ci[0] == 0, cm == 255)


def test_flip_is_joint():
    image, mask = _pair(4, 10)
    fi, fm = transforms.hflip(image.transpose(2, 0, 1), mask)
    assert np.array_equal(fi[0], fm)
    assert np.array_equal(fm, mask[:, ::-1])


def test_train_transform_crops_to_one_minibatch():
    rows = [_pair(20, 30), _pair(12, 40)]
    batch = {"image": [png(i) for i, _ in rows], "mask": [png(m) for _, m in rows]}
    out = transforms.TrainTransform(TV, crop_size=16, flip=True, seed=1)(batch)
    assert out["image"].shape == (2, 3, 16, 16) and out["image"].dtype == np.float32
    assert out["mask"].shape == (2, 16, 16) and out["mask"].dtype == np.uint8


def test_train_transform_whole_images_keep_their_size():
    rows = [_pair(20, 30), _pair(12, 40)]
    batch = {"image": [png(i) for i, _ in rows], "mask": [png(m) for _, m in rows]}
    out = transforms.TrainTransform(TV)(batch)
    assert [i.shape for i in out["image"]] == [(3, 20, 30), (3, 12, 40)]
    assert [m.shape for m in out["mask"]] == [(20, 30), (12, 40)]


def test_size_mismatch_is_a_clear_error():
    image, _ = _pair(8, 8)
    with pytest.raises(ValueError, match="differ in size"):
        transforms.TrainTransform(TV).one(png(image), png(np.zeros((8, 9), np.uint8)))
