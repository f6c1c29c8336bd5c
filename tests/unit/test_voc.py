"""Readers and codecs on the synthetic datasets (the real on-disk layouts)."""

import io

import numpy as np
import pytest
from helpers_data import list_sbd, list_voc
from PIL import Image

from fcn.data import synthetic, voc
from fcn.engine import images
from fcn.engine.classes import VOC_CLASSES, ClassList, parse_class_list, voc_classes, voc_colormap

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
    records = list_voc(str(root / "voc"))
    assert [r.split for r in records].count("train") == len(result.voc["train"])
    for split in ("train", "val"):
        assert [r.image_id for r in records if r.split == split] == result.voc[split]
    for r in records:
        assert r.source == "voc" and r.image_uri.endswith(f"JPEGImages/{r.image_id}.jpg")
        image = Image.open(r.image_uri)
        mask = images.decode_mask(_read(r.mask_uri))
        assert mask.dtype == np.uint8 and mask.shape == (image.height, image.width)
        assert set(np.unique(mask).tolist()) <= LABELS
        assert 255 in mask


def test_list_sbd_reads_back_generated_ids_and_labels(data):
    root, result = data
    records = list_sbd(str(root / "sbd"))
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
            voc_mask = images.decode_mask(
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


def test_list_images_takes_the_codec_extensions(tmp_path):
    picture = Image.new("RGB", (3, 2))
    for name, fmt in (("a.webp", "WEBP"), ("b/c.BMP", "BMP"), ("d.jpeg", "JPEG"), ("e.gif", "GIF")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        picture.save(tmp_path / name, fmt)
    listed = sorted(r.image_id for r in voc.list_images(str(tmp_path)))
    assert listed == ["a.webp", "b/c.BMP", "d.jpeg"]  # GIF is no segmentable image type


def test_sbd_decoder_refuses_other_mat_files():
    buf = io.BytesIO()
    import scipy.io

    scipy.io.savemat(buf, {"x": np.zeros((2, 2))})
    with pytest.raises(images.BadImage, match="GTcls"):
        voc.decode_sbd_mask(buf.getvalue())
    for data, reason in ((b"", "empty"), (b"MATLAB junk", "corrupt")):
        with pytest.raises(images.BadImage) as info:
            voc.decode_sbd_mask(data)
        assert info.value.reason == reason


def test_sbd_mask_is_the_same_array_as_a_png_mask_and_capped():
    label = np.array([[0, 1, 2], [3, 0, 20]], np.uint8)
    mask = voc.decode_sbd_mask(synthetic.encode_sbd_mat(label))
    png = images.decode_mask(images.encode_mask(label))
    assert mask.dtype == png.dtype == np.uint8 and mask.flags.writeable
    assert np.array_equal(mask, png)
    with pytest.raises(images.BadImage, match="max-pixels 5") as info:
        voc.decode_sbd_mask(synthetic.encode_sbd_mat(label), max_pixels=5)
    assert info.value.reason == "too_large"


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


def test_class_colours_are_unique_when_some_are_left_out():
    """Defect 2: `car` without a colour got VOC colour 1, the colour `road` was given, so masks
    and the CVAT export (read back by colour) merged the two classes."""
    classes = parse_class_list("background\nroad 128 0 0\ncar\nsky\n")
    assert len(set(classes.colors)) == classes.num_classes
    assert classes.colors[:2] == ((0, 0, 0), (128, 0, 0))
    assert classes.colors[2] != (128, 0, 0)
    assert classes.colors[3] == tuple(voc_colormap()[3])  # free: its VOC colour, as before
    assert classes == parse_class_list("background\nroad 128 0 0\ncar\nsky\n")  # deterministic
    palette = classes.palette()
    assert len({tuple(palette[i]) for i in range(classes.num_classes)}) == classes.num_classes
    as_json = parse_class_list('["bg", {"name": "road", "color": [0, 128, 0]}, "car"]')
    assert as_json.colors[1] == (0, 128, 0) and as_json.colors[2] not in as_json.colors[:2]


def test_the_same_colour_given_twice_is_refused_and_old_lists_still_load():
    with pytest.raises(ValueError, match="'road' and 'car' have the same color 128 0 0"):
        parse_class_list("road 128 0 0\ncar #800000\n")
    # Recorded before colours were unique (dataset summary, checkpoint): the later one moves.
    old = {"num_classes": 2, "names": ["road", "car"], "colors": [[128, 0, 0], [128, 0, 0]]}
    loaded = ClassList.from_dict(old)
    assert loaded.colors[0] == (128, 0, 0) and loaded.colors[1] != (128, 0, 0)
    assert ClassList.from_dict(loaded.to_dict()) == loaded
    assert voc_classes().colors == tuple(tuple(int(v) for v in c) for c in voc_colormap()[:21])
