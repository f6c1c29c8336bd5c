"""Readers and codecs on the synthetic datasets (the real on-disk layouts)."""

import io

import numpy as np
import pytest
from PIL import Image

from fcn.data import synthetic, voc
from fcn.data.classes import VOC_CLASSES, parse_class_list, voc_classes, voc_colormap

LABELS = set(range(len(VOC_CLASSES))) | {255}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    result = synthetic.generate(
        root / "voc", root / "sbd", root / "unl", num_images=8, seed=2, min_size=48, max_size=80
    )
    return root, result


def _read(uri):
    with open(uri, "rb") as f:
        return f.read()


def test_list_voc_reads_back_generated_ids_sizes_and_labels(data):
    root, result = data
    records = voc.list_voc(str(root / "voc"))
    assert [r.split for r in records].count("train") == len(result.voc["train"])
    for split in ("train", "val"):
        assert [r.image_id for r in records if r.split == split] == result.voc[split]
    for r in records:
        assert r.source == "voc" and r.image_uri.endswith(f"JPEGImages/{r.image_id}.jpg")
        image = Image.open(r.image_uri)
        mask = voc.decode_voc_mask(_read(r.mask_uri))
        assert mask.dtype == np.uint8 and mask.shape == (image.height, image.width)
        assert set(np.unique(mask).tolist()) <= LABELS
        assert 255 in mask


def test_list_sbd_reads_back_generated_ids_and_labels(data):
    root, result = data
    records = voc.list_sbd(str(root / "sbd"))
    for split in ("train", "val"):
        assert [r.image_id for r in records if r.split == split] == result.sbd[split]
    voc_ids = set(result.voc["trainval"])
    for r in records:
        assert r.source == "sbd"
        image = Image.open(r.image_uri)
        mask = voc.decode_sbd_mask(_read(r.mask_uri))
        assert mask.shape == (image.height, image.width)
        assert set(np.unique(mask).tolist()) <= LABELS - {255}  # SBD has no void border
        if r.image_id in voc_ids:  # same picture: labels agree off the VOC void band
            voc_mask = voc.decode_voc_mask(
                _read(str(root / "voc" / "SegmentationClass" / f"{r.image_id}.png"))
            )
            keep = voc_mask != 255
            assert np.array_equal(mask[keep], voc_mask[keep])


def test_list_images_walks_nested_mixed_case_tree(data):
    root, result = data
    records = voc.list_images(str(root / "unl"))
    assert sorted(r.image_id for r in records) == sorted(result.unlabeled)
    assert all(r.mask_uri is None and r.split == "unlabeled" for r in records)
    for r in records:
        assert Image.open(r.image_uri).mode == "RGB"


def test_list_images_of_missing_prefix_is_empty(tmp_path):
    assert voc.list_images(str(tmp_path / "nothing")) == []


def test_read_ids_skips_blank_lines_and_flags(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("2007_000032\n\n2007_000039  1\n")
    assert voc.read_ids(str(path)) == ["2007_000032", "2007_000039"]


def test_mask_png_round_trip():
    mask = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    data = voc.encode_mask(mask)
    assert Image.open(io.BytesIO(data)).mode == "L"
    assert np.array_equal(voc.decode_png_mask(data), mask)


def test_rgb_mask_is_refused():
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    with pytest.raises(ValueError, match="mode RGB"):
        voc.decode_png_mask(buf.getvalue())


def test_sbd_decoder_refuses_other_mat_files():
    buf = io.BytesIO()
    import scipy.io

    scipy.io.savemat(buf, {"x": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="GTcls"):
        voc.decode_sbd_mask(buf.getvalue())


def test_voc_colormap_matches_devkit():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert tuple(cmap[0]) == (0, 0, 0)
    assert tuple(cmap[1]) == (128, 0, 0)
    assert tuple(cmap[15]) == (192, 128, 128)
    assert tuple(cmap[255]) == (224, 224, 192)


def test_class_list_files():
    assert voc_classes().num_classes == 21
    custom = parse_class_list("# mine\nbackground\nroad 128 64 128\nsky #4682b4\n")
    assert custom.names == ("background", "road", "sky")
    assert custom.colors[1] == (128, 64, 128) and custom.colors[2] == (70, 130, 180)
    assert custom.colors[0] == (0, 0, 0)
    assert tuple(custom.palette()[2]) == (70, 130, 180)
    as_json = parse_class_list('[{"name": "bg"}, {"name": "x", "color": [1, 2, 3]}]')
    assert as_json.num_classes == 2 and as_json.colors[1] == (1, 2, 3)
    with pytest.raises(ValueError):
        parse_class_list("a\na\n")
