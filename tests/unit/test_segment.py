"""The segment job's pieces on local files: decoding policy, masks, planning, manifest, the
predictor against a direct forward pass, and `run` end to end on a local in-process Ray."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import varied_model
from PIL import Image

from fcn import checkpoint, images, manifest, masks, storage
from fcn.config import SegmentConfig
from fcn.data.classes import voc_colormap
from fcn.models import build_from_config
from fcn.models.preprocess import normalize

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = varied_model(NUM_CLASSES)
    uri = str(tmp_path_factory.mktemp("ckpt") / "checkpoint")
    config = {
        "model": "fcn-alexnet",
        "num_classes": NUM_CLASSES,
        "preprocessing": model.preprocessing,
    }
    checkpoint.save(model.state_dict(), config, uri)
    return uri


def picture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image[: h // 2, : w // 3] = (200, 30, 30)  # structure, so classes differ across the image
    return image


def encode(image, fmt="PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(
        buffer, fmt, **kwargs
    )
    return buffer.getvalue()


def direct(model_dir: str, image: np.ndarray) -> np.ndarray:
    state, config = checkpoint.load(model_dir)
    model = build_from_config(config)
    model.load_state_dict(state)
    with torch.inference_mode():
        logits = model.eval()(normalize(image, config["preprocessing"])[None])
    return logits.argmax(1)[0].numpy()


# --- decoding policy -----------------------------------------------------------------------


def _bad_inputs():
    jpeg = encode(picture(40, 40, 0), "JPEG")
    frames = [Image.fromarray(picture(8, 8, i)) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "zero-byte": (b"", "empty file"),
        "text named .jpg": (b"<html>not found</html>", "not an image"),
        "corrupt header": (b"\xff\xd8\xff\xe0" + b"\x00" * 50, "image"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        "animated gif": (gif.getvalue(), "animated GIF with 3 frames"),
        "too many pixels": (encode(np.zeros((100, 101, 3), np.uint8)), "exceeds --max-pixels"),
    }


@pytest.mark.parametrize("name", list(_bad_inputs()))
def test_bad_inputs_are_refused_with_a_reason(name):
    data, reason = _bad_inputs()[name]
    with pytest.raises(images.BadImage, match=reason):
        images.decode_image(data, max_pixels=10_000)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(picture(9, 7, 1)).convert("L"),
        lambda: Image.fromarray(picture(9, 7, 1)).convert("P"),
        lambda: Image.fromarray(picture(9, 7, 1)).convert("RGBA"),
        lambda: Image.fromarray(picture(9, 7, 1)).convert("CMYK"),
        lambda: Image.fromarray(picture(9, 7, 1)).convert("1"),
        lambda: Image.fromarray(np.arange(63, dtype=np.uint16).reshape(9, 7) * 1000),
    ],
    ids=["grayscale", "palette", "rgba", "cmyk", "1-bit", "16-bit"],
)
def test_odd_but_valid_modes_become_rgb(make):
    image = make()
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    rgb = images.decode_image(encode(image, fmt), max_pixels=10_000)
    assert rgb.shape == (9, 7, 3) and rgb.dtype == np.uint8


def test_16bit_is_scaled_to_8bit():
    gray = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    rgb = images.decode_image(encode(gray), max_pixels=10)
    assert rgb[0, :, 0].tolist() == [0, 255]


def test_one_pixel_image_is_valid():
    assert images.decode_image(encode(picture(1, 1, 0)), max_pixels=10).shape == (1, 1, 3)


def test_exif_orientation_is_applied():
    image = Image.fromarray(picture(10, 30, 0))  # stored 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rgb = images.decode_image(encode(image, "JPEG", exif=exif), max_pixels=10_000)
    assert rgb.shape == (30, 10, 3)  # the displayed size: the mask will overlay the view


def test_mask_png_has_class_values_and_voc_palette():
    mask = np.array([[0, 1, 2], [3, 3, 0]], np.uint8)
    png = Image.open(io.BytesIO(images.encode_mask(mask, voc_colormap())))
    assert png.mode == "P" and png.size == (3, 2)
    assert np.array_equal(np.asarray(png), mask)
    assert np.array_equal(np.asarray(png.getpalette()).reshape(-1, 3), voc_colormap())


def test_mask_key_drops_the_extension():
    assert masks.mask_key("a/b/photo.JPG") == "a/b/photo.png"
    assert masks.mask_key("x.tar.jpeg") == "x.tar.png"


# --- planning and manifest -----------------------------------------------------------------


def cfg(tmp_path, **kw) -> SegmentConfig:
    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "model": "m"}
    return SegmentConfig(**{**base, **kw})


def test_plan_skips_done_redoes_changed_and_refuses_colliding_keys(tmp_path):
    config = cfg(tmp_path)
    a = storage.FileInfo(f"{config.input}/a.jpg", 10, 1.0)
    a_png = storage.FileInfo(f"{config.input}/a.png", 10, 1.0)
    b = storage.FileInfo(f"{config.input}/d/b.jpg", 20, 2.0)
    bad = storage.FileInfo(f"{config.input}/bad.jpg", 0, 2.0)
    done = {
        (b.uri, "20:2.0"): {"status": "ok", "mask_uri": f"{config.output}/d/b.png"},
        (bad.uri, "0:2.0"): {"status": "error", "error": "empty file (0 bytes)"},
    }
    todo, decided = manifest_plan(config, [a, a_png, b, bad], done)
    assert [t["uri"] for t in todo] == [a.uri]
    assert todo[0]["mask_uri"] == f"{config.output}/a.png"
    by_uri = {r["uri"]: r for r in decided}
    assert by_uri[a_png.uri]["status"] == "error" and "already taken" in by_uri[a_png.uri]["error"]
    assert by_uri[b.uri]["status"] == "skipped"
    assert (
        by_uri[bad.uri]["status"] == "skipped"
        and "unchanged since it failed" in by_uri[bad.uri]["error"]
    )
    changed = storage.FileInfo(b.uri, 21, 3.0)  # new bytes: segmented again
    todo, _ = manifest_plan(config, [changed], done)
    assert [t["uri"] for t in todo] == [b.uri]


def manifest_plan(config, images, done):
    from fcn.segment import plan

    return plan(config, images, done, "m", "run")


def test_output_inside_input_is_not_listed_as_input(tmp_path):
    from fcn.segment import list_images

    (tmp_path / "in" / "masks").mkdir(parents=True)
    (tmp_path / "in" / "x.jpg").write_bytes(b"x")
    (tmp_path / "in" / "masks" / "x.png").write_bytes(b"x")
    config = SegmentConfig(str(tmp_path / "in"), str(tmp_path / "in" / "masks"), "m")
    assert [Path(f.uri).name for f in list_images(config)] == ["x.jpg"]
    with pytest.raises(ValueError, match="must differ"):
        list_images(SegmentConfig(str(tmp_path / "in"), str(tmp_path / "in"), "m"))


def test_unreadable_manifest_is_ignored(tmp_path, capsys):
    out = str(tmp_path / "out")
    manifest.write(manifest.run_uri(out, "r1"), manifest.to_table([{"uri": "u", "status": "ok"}]))
    storage.write_bytes(manifest.run_uri(out, "r2"), b"PAR1 truncated")
    table = manifest.read_all(out)
    assert table.column("uri").to_pylist() == ["u"]
    assert "ignoring unreadable manifest" in capsys.readouterr().err


# --- the predictor, in process -------------------------------------------------------------


def test_predictor_masks_equal_a_direct_forward(tmp_path, model_dir):
    from fcn.predictor import Predictor

    images = {"a.png": picture(64, 80, 1), "b.png": picture(64, 80, 2), "c.png": picture(72, 96, 3)}
    rows = []
    for name, image in images.items():
        (tmp_path / name).write_bytes(encode(image))
        rows.append({"uri": str(tmp_path / name), "mask_uri": str(tmp_path / "m" / name)})
        rows[-1].update(etag="e", size=1)
    rows.append({"uri": str(tmp_path / "gone.png"), "mask_uri": str(tmp_path / "m/gone.png")})
    rows[-1].update(etag="e", size=1)
    settings = {**SegmentConfig("i", "o", "m").__dict__, "parts_uri": str(tmp_path / "parts")}
    predictor = Predictor(model_dir, settings, "run")
    out = predictor(pa.Table.from_pylist(rows)).to_pylist()
    assert [r["status"] for r in out] == ["ok", "ok", "ok", "error"]
    assert "read failed" in out[-1]["error"]
    for name, image in images.items():
        mask = np.asarray(Image.open(tmp_path / "m" / name))
        expected = direct(model_dir, image)
        assert mask.shape == image.shape[:2]
        assert len(np.unique(expected)) > 1  # the test model really varies
        assert np.array_equal(mask, expected)
    assert (
        out[0]["class_counts"]
        == np.bincount(direct(model_dir, images["a.png"]).ravel(), minlength=NUM_CLASSES).tolist()
    )
    parts = storage.list_files(str(tmp_path / "parts"))
    assert len(parts) == 1  # the part is written with the batch (crash safety)


def test_multi_scale_averages_to_full_size_masks(model_dir):
    from fcn.inference import load_model, predict

    loaded = load_model(model_dir)
    model, spec = loaded.model, loaded.preprocessing
    images = np.stack([picture(64, 72, 7)])
    single = predict(model, images, spec)
    assert np.array_equal(predict(model, images, spec, scales=(1.0, 1.0)), single)
    multi = predict(model, images, spec, scales=(0.5, 1.0, 1.5))
    assert multi.shape == single.shape == (1, 64, 72)


# --- run() end to end on local Ray ---------------------------------------------------------


@pytest.mark.slow
def test_run_local_incremental_and_exit_status(tmp_path, model_dir, local_ray):
    from fcn.segment import run

    src = tmp_path / "in"
    (src / "d").mkdir(parents=True)
    (src / "a.jpg").write_bytes(encode(picture(64, 64, 1), "JPEG"))
    (src / "d" / "b.PNG").write_bytes(encode(picture(72, 64, 2)))
    (src / "bad.jpg").write_bytes(b"oops")
    (src / "notes.txt").write_bytes(b"not listed")
    config = SegmentConfig(str(src), str(tmp_path / "out"), model_dir, max_error_fraction=0.5)

    first = run(config)
    assert (first["done"], first["failed"], first["skipped"], first["ok"]) == (2, 1, 0, True)
    masks_written = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")
    )
    assert masks_written == ["a.png", "d/b.png"]
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.png")}
    rows = pq.read_table(first["manifest"]).to_pylist()
    assert {r["status"] for r in rows} == {"ok", "error"}
    assert all(r["model"] == model_dir for r in rows)

    second = run(config)
    assert (second["done"], second["failed"], second["skipped"]) == (0, 0, 3)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.png")} == stamps

    (src / "d" / "b.PNG").write_bytes(encode(picture(72, 64, 3)))  # changed image: redone
    os.utime(src / "d" / "b.PNG", (1, 1))
    third = run(
        SegmentConfig(
            str(src), str(tmp_path / "out"), model_dir, max_error_fraction=0.0, retry_errors=True
        )
    )
    assert (third["done"], third["failed"], third["skipped"]) == (1, 1, 1)
    assert not third["ok"]  # 1 of 2 failed > 0.0: jobs/segment.py exits 1
    mask = np.asarray(Image.open(tmp_path / "out" / "d" / "b.png"))
    assert np.array_equal(mask, direct(model_dir, picture(72, 64, 3)))


@pytest.mark.slow
def test_run_local_on_a_parquet_split(tmp_path, model_dir, local_ray):
    from fcn.segment import run

    images = [picture(64, 64, 5), picture(64, 72, 6)]
    table = pa.table(
        {
            "uri": ["s3://bucket/raw/x.jpg", "s3://bucket/raw/y/z.png"],
            "image": [encode(images[0]), encode(images[1])],
        }
    )
    (tmp_path / "split").mkdir()
    pq.write_table(table, tmp_path / "split" / "part-0.parquet")
    config = SegmentConfig(str(tmp_path / "split"), str(tmp_path / "out"), model_dir)
    first = run(config)
    assert (first["done"], first["failed"]) == (2, 0)
    mask = np.asarray(Image.open(tmp_path / "out" / "bucket" / "raw" / "y" / "z.png"))
    assert np.array_equal(mask, direct(model_dir, images[1]))
    second = run(config)
    assert (second["done"], second["skipped"]) == (0, 2)


class _StrideTwoNet(torch.nn.Module):
    """A tiny single-stride net with the FCN geometry attributes dense_logits reads."""

    coarse_stride, coarse_offset, skips = 2, 0.5, ()

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.score = torch.nn.Conv2d(3, 3, 2, stride=2)

    def coarse_score(self, x):
        return self.score(x)

    def forward(self, x):
        return torch.nn.functional.interpolate(self.coarse_score(x), size=x.shape[-2:])


def test_predict_with_shift_and_stitch_takes_the_dense_logits():
    from fcn.inference import predict
    from fcn.models.preprocess import CAFFE, normalize
    from fcn.models.shift_stitch import dense_logits

    model = _StrideTwoNet().eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    got = predict(model, images, CAFFE, shift_and_stitch=True)
    with torch.no_grad():
        want = dense_logits(model, normalize(images, CAFFE)).argmax(1).numpy()
    assert got.shape == (2, 9, 11)
    np.testing.assert_array_equal(got, want)
    plain = predict(model, images, CAFFE)
    assert (plain != got).any()  # nearest upsampling of coarse cells is not the dense output
