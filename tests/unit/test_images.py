"""The one codec (fcn/images.py) and the promise it exists for: a photo stored sideways with an
EXIF orientation has one orientation in ingest, training, evaluation and segmentation."""

import io

import numpy as np
import pytest
from fixtures.hostile import bomb_png
from helpers_data import list_voc
from PIL import Image

from fcn.data import synthetic, transforms
from fcn.data.validate import validate_record
from fcn.engine import images
from fcn.engine.classes import voc_colormap
from fcn.engine.models import preprocess
from fcn.evaluation import score as evaluate

# Stored pixel array -> displayed array, per EXIF orientation (the EXIF specification's table).
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _png(array: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG", **({"exif": exif} if exif else {}))
    return buf.getvalue()


def _stored(h=3, w=5) -> np.ndarray:
    # Every pixel distinct, so any wrong flip or turn changes the array.
    values = np.arange(h * w, dtype=np.uint8).reshape(h, w) * 10
    return np.stack([values, 255 - values, np.full_like(values, 7)], axis=-1)


@pytest.mark.parametrize("orientation", list(DISPLAYED))
def test_every_exif_orientation_decodes_as_displayed_and_verify_agrees(orientation):
    stored = _stored()
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _png(stored, exif)  # PNG: lossless, so the arrays compare exactly
    shown = images.decode_image(data)
    assert np.array_equal(shown, DISPLAYED[orientation](stored))
    assert images.verify_image(data) == shown.shape[:2]


def _noise_jpeg() -> bytes:
    # Noise, so that most of the file is pixel data (a flat JPEG is nearly all header).
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    return synthetic.encode_jpeg(pixels)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"<html>not found</html>", "corrupt"),
        (bomb_png(), "too_large"),
        (_noise_jpeg()[:2000], "truncated"),
    ],
    ids=["empty", "text", "bomb", "truncated"],
)
def test_refusals_carry_a_reason(data, reason):
    for decode in (images.decode_image, images.verify_image):
        with pytest.raises(images.BadImage) as info:
            decode(data)
        assert info.value.reason == reason


def test_animated_and_float_images_are_unsupported():
    frames = [Image.fromarray(_stored() + k) for k in range(2)]  # equal frames would merge
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    floats = io.BytesIO()
    Image.fromarray(np.zeros((3, 4), np.float32)).save(floats, "TIFF")
    for data in (gif.getvalue(), floats.getvalue()):
        with pytest.raises(images.BadImage) as info:
            images.verify_image(data)
        assert info.value.reason == "unsupported"


def test_pixel_cap_is_on_the_stored_size_for_images_and_masks():
    image = _png(_stored(4, 5))
    assert images.verify_image(image, max_pixels=20) == (4, 5)
    with pytest.raises(images.BadImage, match="exceeds --max-pixels 19"):
        images.verify_image(image, max_pixels=19)
    mask = images.encode_mask(np.zeros((4, 5), np.uint8))
    assert images.decode_mask(mask, max_pixels=20).shape == (4, 5)
    with pytest.raises(images.BadImage) as info:
        images.decode_mask(mask, max_pixels=19)
    assert info.value.reason == "too_large"


def test_mask_codec_round_trip_gray_and_palette():
    mask = np.array([[0, 1, 255], [20, 3, 0]], np.uint8)
    gray = images.encode_mask(mask)
    assert Image.open(io.BytesIO(gray)).mode == "L"
    assert np.array_equal(images.decode_mask(gray), mask)
    palette = images.encode_mask(mask, voc_colormap())
    assert Image.open(io.BytesIO(palette)).mode == "P"
    assert np.array_equal(images.decode_mask(palette), mask)


def test_bad_masks_are_refused_with_a_reason():
    with pytest.raises(images.BadImage, match="mode RGB") as info:
        images.decode_mask(_png(_stored()))
    assert info.value.reason == "unsupported"
    for data, reason in ((b"", "empty"), (b"\x89PNG nope", "corrupt")):
        with pytest.raises(images.BadImage) as info:
            images.decode_mask(data)
        assert info.value.reason == reason


# --- one orientation everywhere -----------------------------------------------------------


@pytest.mark.parametrize("orientation", [6, 8])
def test_sideways_jpeg_has_one_orientation_in_ingest_training_evaluation_and_segment(
    tmp_path, orientation
):
    shown, label = synthetic.add_sideways_image(tmp_path, orientation=orientation)
    (record,) = list_voc(str(tmp_path), ("val",))
    jpeg = (tmp_path / "JPEGImages" / f"{record.image_id}.jpg").read_bytes()
    mask = (tmp_path / "SegmentationClass" / f"{record.image_id}.png").read_bytes()
    stored = Image.open(io.BytesIO(jpeg))
    assert stored.size == (48, 80)  # stored sideways: W x H of the pixel array = 48 x 80
    assert shown.shape[:2] == label.shape == (48, 80)  # displayed: 48 high, 80 wide

    # Segment decodes it as displayed (JPEG is lossy: close to the picture, not equal) ...
    segment = images.decode_image(jpeg)
    assert segment.shape == shown.shape
    assert np.abs(segment.astype(int) - shown).mean() < 8
    assert np.abs(np.rot90(segment, 2).astype(int) - shown).mean() > 20  # 6 and 8 differ
    # ... ingest records the displayed size and accepts the mask drawn on the displayed image,
    row = validate_record(record, jpeg, mask, 21, images.DEFAULT_MAX_PIXELS)
    assert (row["height"], row["width"]) == (48, 80)
    assert np.array_equal(images.decode_mask(row["mask"]), label)
    # ... and training and evaluation see that same array beside that same mask.
    spec = preprocess.TORCHVISION
    expected = transforms.normalize(segment, spec)
    image, truth = transforms.TrainTransform(spec).one(row["image"], row["mask"])
    assert np.array_equal(image, expected) and np.array_equal(truth, label)
    image, truth = evaluate.decode_row(evaluate.Row(0, "sideways", row["image"], row["mask"]))
    assert np.array_equal(image, segment) and np.array_equal(truth, label)
