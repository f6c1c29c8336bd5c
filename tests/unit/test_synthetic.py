"""The synthetic generator: real layouts, deterministic bytes, learnable labels."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn.data import synthetic
from fcn.engine.classes import VOC_CLASSES, ClassList, parse_class_list, voc_colormap


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
    with pytest.raises(ValueError, match=r"1\.\.4"):
        synthetic.generate(tmp_path, classes=(5,), class_list=synthetic.custom_classes())


def test_cli(tmp_path, capsys):
    synthetic.main(
        ["--voc", str(tmp_path / "voc"), "--num-images", "4", "--seed", "1"]
        + ["--min-size", "40", "--max-size", "50", "--classes", "1,15"]
    )
    assert "VOC train: 2 images" in capsys.readouterr().out
    masks = (tmp_path / "voc" / "SegmentationClass").glob("*.png")
    values = set().union(*(np.unique(np.asarray(Image.open(m))).tolist() for m in masks))
    assert values <= {0, 1, 15, 255}


def _palette(png: Image.Image) -> np.ndarray:
    return np.frombuffer(bytes(png.getpalette()), np.uint8).reshape(-1, 3)[:256]


def test_custom_class_list_labels_palette_and_class_file(tmp_path):
    classes = synthetic.custom_classes()
    assert classes.num_classes == 5 and len(set(classes.colors)) == 5
    assert not set(classes.colors) & {tuple(c) for c in voc_colormap()[:5].tolist()}
    result = synthetic.generate(
        tmp_path / "voc", tmp_path / "sbd", num_images=8, seed=1, min_size=40, max_size=56,
        class_list=classes,
    )  # fmt: skip
    assert result.classes == classes
    for root in ("voc", "sbd"):  # the class file, in the form `ingest --classes` reads
        assert parse_class_list((tmp_path / root / synthetic.CLASS_FILE).read_text()) == classes
    seen = set()
    for image_id in result.voc["trainval"]:
        mask = Image.open(tmp_path / "voc" / "SegmentationClass" / f"{image_id}.png")
        assert mask.mode == "P" and np.array_equal(_palette(mask), classes.palette())
        values = set(np.unique(np.asarray(mask)).tolist())
        assert values <= {0, 1, 2, 3, 4, 255}
        seen |= values
    assert len(seen - {0, 255}) >= 2
    image_id = result.sbd["train"][0]
    mat = scipy.io.loadmat(tmp_path / "sbd" / "dataset" / "cls" / f"{image_id}.mat",
                           squeeze_me=True, struct_as_record=False)  # fmt: skip
    assert mat["GTcls"].Boundaries.shape == (4,)  # one per object class of the list
    assert set(np.unique(mat["GTcls"].Segmentation).tolist()) <= {0, 1, 2, 3, 4}


def test_without_a_class_list_no_class_file_is_written(tmp_path):
    synthetic.generate(tmp_path / "voc", num_images=2, min_size=8, max_size=8)
    assert not (tmp_path / "voc" / synthetic.CLASS_FILE).exists()


def test_cli_with_a_class_list(tmp_path, capsys):
    classes = ClassList(("bg", "cup", "pen"), ((0, 0, 0), (1, 2, 3), (250, 5, 9)))
    class_file = tmp_path / "mine.json"
    class_file.write_text(json.dumps(classes.to_dict()))
    synthetic.main(
        ["--voc", str(tmp_path / "voc"), "--num-images", "4", "--min-size", "30"]
        + ["--max-size", "40", "--class-list", str(class_file)]
    )
    assert "VOC val: 2 images" in capsys.readouterr().out
    written = (tmp_path / "voc" / synthetic.CLASS_FILE).read_text()
    assert parse_class_list(written) == classes
    for mask in (tmp_path / "voc" / "SegmentationClass").glob("*.png"):
        png = Image.open(mask)
        assert set(np.unique(np.asarray(png)).tolist()) <= {0, 1, 2, 255}
        assert tuple(_palette(png)[2]) == (250, 5, 9)


@pytest.mark.parametrize("orientation", [6, 8])
def test_sideways_image_is_stored_turned_with_its_exif_orientation(tmp_path, orientation):
    synthetic.generate(tmp_path, num_images=2, min_size=8, max_size=8)
    shown, label = synthetic.add_sideways_image(tmp_path, "2098_000007", "train",
                                                orientation, size=(30, 50))  # fmt: skip
    assert shown.shape == (30, 50, 3) and label.shape == (30, 50)
    stored = Image.open(tmp_path / "JPEGImages" / "2098_000007.jpg")
    assert stored.size == (30, 50)  # W x H stored: the displayed 50 x 30 turned sideways
    assert stored.getexif()[0x0112] == orientation
    mask = Image.open(tmp_path / "SegmentationClass" / "2098_000007.png")
    assert mask.size == (50, 30) and np.array_equal(np.asarray(mask), label)
    lists = tmp_path / "ImageSets" / "Segmentation"
    for name in ("train", "trainval"):
        assert "2098_000007" in (lists / f"{name}.txt").read_text().split()
    assert "2098_000007" not in (lists / "val.txt").read_text().split()
    with pytest.raises(ValueError, match="6 or 8"):
        synthetic.sideways_jpeg(shown, 3)
