"""The synthetic generator: real layouts, deterministic bytes, learnable labels."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcn.data import synthetic
from fcn.data.classes import VOC_CLASSES, voc_colormap


def _tree(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _generate(root: Path, seed: int = 0, n: int = 8):
    return synthetic.generate(
        root / "voc", root / "sbd", root / "unl", num_images=n, seed=seed, min_size=48, max_size=96
    )


def test_same_seed_gives_byte_identical_files(tmp_path):
    _generate(tmp_path / "a", seed=5)
    _generate(tmp_path / "b", seed=5)
    _generate(tmp_path / "c", seed=6)
    a, b, c = (_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert a != c


def test_layouts_and_splits(tmp_path):
    result = _generate(tmp_path, n=9)
    voc, sbd = tmp_path / "voc", tmp_path / "sbd" / "dataset"
    assert set(result.voc) == {"train", "val", "trainval"}
    assert sorted(result.voc["train"] + result.voc["val"]) == result.voc["trainval"]
    assert len(result.voc["trainval"]) == 9
    for split, ids in result.voc.items():
        listed = (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        assert listed == ids
    for image_id in result.voc["trainval"]:
        assert (voc / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (voc / "SegmentationClass" / f"{image_id}.png").is_file()
        assert len(image_id) == 11 and image_id[4] == "_"
    sbd_ids = result.sbd["train"] + result.sbd["val"]
    assert len(set(sbd_ids)) == 9 and not set(result.sbd["train"]) & set(result.sbd["val"])
    for split in ("train", "val"):
        assert (sbd / f"{split}.txt").read_text().split() == result.sbd[split]
    for image_id in sbd_ids:
        assert (sbd / "img" / f"{image_id}.jpg").is_file()
        assert (sbd / "cls" / f"{image_id}.mat").is_file()
    # As in reality, some SBD ids are VOC ids too: the same picture.
    shared = set(sbd_ids) & set(result.voc["trainval"])
    assert shared
    for image_id in shared:
        voc_jpg = (voc / "JPEGImages" / f"{image_id}.jpg").read_bytes()
        assert voc_jpg == (sbd / "img" / f"{image_id}.jpg").read_bytes()
    exts = {Path(k).suffix for k in result.unlabeled}
    assert {".jpg", ".JPG", ".png"} <= exts
    assert any(k.count("/") >= 2 for k in result.unlabeled)


def test_voc_masks_are_palette_pngs_with_void_borders(tmp_path):
    result = _generate(tmp_path)
    seen = set()
    for image_id in result.voc["trainval"]:
        image = Image.open(tmp_path / "voc" / "JPEGImages" / f"{image_id}.jpg")
        mask = Image.open(tmp_path / "voc" / "SegmentationClass" / f"{image_id}.png")
        assert image.mode == "RGB" and mask.mode == "P"
        assert image.size == mask.size
        assert min(image.size) >= 48 and max(image.size) <= 96
        palette = np.frombuffer(bytes(mask.getpalette()), np.uint8).reshape(-1, 3)
        assert np.array_equal(palette[:256], voc_colormap())
        values = set(np.unique(np.asarray(mask)).tolist())
        assert values <= set(range(len(VOC_CLASSES))) | {255}
        assert 255 in values  # every image has at least one object, hence a border
        seen |= values
    assert len(seen - {0, 255}) >= 2


def test_class_looks_are_distinct():
    colors = np.array([synthetic.class_look(c).color for c in synthetic.OBJECT_CLASSES])
    distances = np.linalg.norm(colors[:, None] - colors[None], axis=-1)
    distances[np.diag_indices(len(colors))] = np.inf
    assert distances.min() > 20


def test_void_border_marks_outlines_only():
    label = np.zeros((10, 10), np.uint8)
    label[3:7, 3:7] = 4
    out = synthetic.void_border(label, 1)
    assert out[5, 5] == 4 and out[0, 0] == 0
    assert out[3, 3] == 255 and out[2, 2] == 255 and out[4, 4] == 4


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path, min_size=50, max_size=40)
    with pytest.raises(ValueError):
        synthetic.generate(tmp_path, classes=(0,))


def test_cli(tmp_path, capsys):
    synthetic.main(
        ["--voc", str(tmp_path / "voc"), "--num-images", "4", "--seed", "1"]
        + ["--min-size", "40", "--max-size", "50", "--classes", "1,15"]
    )
    assert "VOC train: 2 images" in capsys.readouterr().out
    masks = (tmp_path / "voc" / "SegmentationClass").glob("*.png")
    values = set().union(*(np.unique(np.asarray(Image.open(m))).tolist() for m in masks))
    assert values <= {0, 1, 15, 255}
