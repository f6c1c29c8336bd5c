"""The segment job's pieces on local files: decoding policy, masks, planning, manifest, the
predictor against a direct forward pass, and `run` end to end on a local in-process Ray."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import RASTER_CRS_EPSG, geotiff, raster_rgb, varied_model
from PIL import Image

from fcn import storage
from fcn.config import SegmentConfig
from fcn.engine import checkpoint, images
from fcn.engine.classes import voc_colormap
from fcn.engine.models.preprocess import normalize
from fcn.nightly import manifest, masks, plan, schema, source, state

NUM_CLASSES = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = varied_model(NUM_CLASSES)
    uri = str(tmp_path_factory.mktemp("ckpt") / "checkpoint")
    config = {
        "model": "fcn-alexnet",
        "num_classes": NUM_CLASSES,
        "preprocessing": "torchvision",
    }
    checkpoint.save(model.state_dict(), config, uri)
    return uri


@pytest.fixture(scope="module")
def small_model_dir(tmp_path_factory):
    """FCN-32s at 1/16 width (1 MB) for the nights on local Ray: FCN-AlexNet's 230 MB and its
    fc6/fc7 (over a whole raster, too) cost each night's actors (and the direct forward)
    seconds."""
    model = varied_model(NUM_CLASSES, "fcn32s", biases=True, width=0.0625)
    uri = str(tmp_path_factory.mktemp("small") / "checkpoint")
    config = {"model": "fcn32s", "num_classes": NUM_CLASSES, "preprocessing": "torchvision",
              "width": 0.0625}  # fmt: skip
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


def direct_scores(model_dir: str, image: np.ndarray) -> torch.Tensor:
    state, config = checkpoint.load(model_dir)
    model = config.build_model()
    model.load_state_dict(state)
    with torch.inference_mode():
        return model.eval()(normalize(image, config.preprocessing)[None])[0]


def direct(model_dir: str, image: np.ndarray) -> np.ndarray:
    return direct_scores(model_dir, image).argmax(0).numpy()


def assert_mask_of(mask: np.ndarray, model_dir: str, image: np.ndarray) -> np.ndarray:
    """`mask` is the argmax of a direct forward of `image`, but where the two best classes'
    scores tie to float rounding: another batch shape, tile or thread count sums in another
    order and may flip those (seen on CI: a handful of pixels in 500,000). A pixel that
    differs anywhere else (a band or tile out of place, a wrong crop) fails. Returns the
    direct forward's mask."""
    scores = direct_scores(model_dir, image)
    expected = scores.argmax(0).numpy()
    top2 = scores.topk(2, dim=0).values
    tie = (top2[0] - top2[1] <= 1e-4 * top2[0].abs().clamp(min=1.0)).numpy()
    assert tie.mean() < 1e-3  # the test model separates its classes almost everywhere
    differ = mask.reshape(expected.shape) != expected
    assert not (differ & ~tie).any(), f"{int((differ & ~tie).sum())} pixels differ off a tie"
    return expected


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
    assert masks.mask_key("aerial/scene.TIFF") == "aerial/scene.tif"  # a raster: GeoTIFF
    assert masks.mask_key("aerial/scene.tif") == "aerial/scene.tif"


# --- planning, state and the stages ---------------------------------------------------------


def cfg(tmp_path, **kw) -> SegmentConfig:
    base = {"input": str(tmp_path / "in"), "output": str(tmp_path / "out"), "model": "m"}
    return SegmentConfig(**{**base, **kw})


def listing(rows) -> pa.Table:
    """(path, size, mtime) rows as `Location.walk` gives them."""
    return pa.Table.from_pylist(
        [{"path": p, "size": s, "mtime": m} for p, s, m in rows], storage.WALK_SCHEMA
    )


def state_table(rows) -> pa.Table:
    return pa.Table.from_pylist(rows, schema.STATE)


def test_plan_skips_done_redoes_changed_and_refuses_colliding_keys(tmp_path):
    config = cfg(tmp_path)
    src, out = storage.locate(config.input), storage.locate(config.output)
    a, a_png, b, bad = (f"{src.path}/{k}" for k in ("a.jpg", "a.png", "d/b.jpg", "bad.jpg"))
    done = state_table(
        [
            {"uri": b, "etag": "20:2", "status": "ok", "mask_uri": f"{out.path}/d/b.png"},
            {"uri": bad, "etag": "0:2", "status": "error", "error": "empty file (0 bytes)"},
        ]
    )
    existing = pa.array([f"{out.path}/d/b.png"])
    files = listing([(a, 10, 1.0), (a_png, 10, 1.0), (b, 20, 2.0), (bad, 0, 2.0)])
    work = plan.plan(files, done, existing, src, out, config, "m")
    assert work.todo.column("uri").to_pylist() == [a]
    assert work.todo.column("mask_uri").to_pylist() == [f"{out.path}/a.png"]
    assert work.refused.column("uri").to_pylist() == [a_png]
    assert "already taken by" in work.refused.column("error")[0].as_py()
    assert (work.listed, work.unchanged, work.deferred) == (4, 2, 0)
    changed = listing([(b, 21, 3.0)])  # new bytes: segmented again
    assert plan.plan(changed, done, existing, src, out, config, "m").todo.num_rows == 1
    gone = plan.plan(files, done, pa.array([], pa.string()), src, out, config, "m")
    assert b in gone.todo.column("uri").to_pylist()  # its mask was deleted: redone
    retry = plan.plan(files, done, existing, src, out, cfg(tmp_path, retry_errors=True), "m")
    assert sorted(retry.todo.column("uri").to_pylist()) == sorted([a, bad])


def test_plan_budget_takes_the_oldest_and_then_older_models_masks(tmp_path):
    config = cfg(tmp_path, max_images=2, resegment_older_models=True)
    src, out = storage.locate(config.input), storage.locate(config.output)
    new = [(f"{src.path}/n{i}.jpg", 1, float(10 - i)) for i in range(3)]  # n2 is the oldest
    old = [(f"{src.path}/o{i}.jpg", 1, 1.0) for i in range(2)]
    MODELS = ["models:/f/1", "models:/f/3"]  # noqa: N806
    done = state_table(
        [
            {"uri": p, "etag": "1:1", "status": "ok", "mask_uri": f"{out.path}/o{i}.png",
             "model": model, "time": float(i)}
            for i, ((p, _, _), model) in enumerate(zip(old, MODELS, strict=True))
        ]
    )  # fmt: skip
    existing = pa.array([f"{out.path}/o0.png", f"{out.path}/o1.png"])
    work = plan.plan(listing(new + old), done, existing, src, out, config, "models:/f/2")
    assert work.todo.column("uri").to_pylist() == [new[2][0], new[1][0]]
    assert (work.deferred, work.unchanged, work.resegment) == (2, 1, 0)
    big = dataclasses.replace(config, max_images=10)
    work = plan.plan(listing(new + old), done, existing, src, out, big, "models:/f/2")
    # version 1 made o0's mask (older: redone last); version 3 is newer than 2: kept
    assert work.todo.column("uri").to_pylist()[-1] == old[0][0]
    assert (work.todo.num_rows, work.resegment, work.unchanged) == (4, 1, 1)


def test_odd_keys_are_refused_or_normalized(tmp_path):
    config = cfg(tmp_path)
    src, out = storage.locate(config.input), storage.locate(config.output)
    files = listing([(f"{src.path}/a\\b.jpg", 1, 1.0), (f"{src.path}/x/.hidden.jpg", 1, 1.0)])
    work = plan.plan(files, schema.STATE.empty_table(), pa.array([], pa.string()), src,
                     out, config, "m")  # fmt: skip
    assert "backslash" in work.refused.column("error")[0].as_py()
    assert work.todo.column("mask_uri").to_pylist() == [f"{out.path}/x/.hidden.png"]


def test_plan_split_shares_the_done_rows_and_refuses_a_newcomers_mask_key(tmp_path):
    config = cfg(tmp_path, resegment_older_models=True)
    out = storage.locate(config.output)
    owner, newcomer = "s3://b/a/x.png", "s3://b/a/x.jpg"  # x.jpg sorts first: owner wins
    done_uri, old_uri, new_uri, odd = "s3://b/d.jpg", "s3://b/o.jpg", "/b/n.jpg", "s3://b/./n.jpg"
    done = state_table(
        [
            {"uri": owner, "etag": "sha256:1", "status": "ok", "mask_uri": f"{out.path}/b/a/x.png",
             "model": "models:/f/2"},
            {"uri": done_uri, "etag": "sha256:2", "status": "ok", "model": "models:/f/2",
             "mask_uri": f"{out.path}/b/d.png"},
            {"uri": old_uri, "etag": "sha256:3", "status": "ok", "model": "models:/f/1",
             "mask_uri": f"{out.path}/b/o.png"},
        ]
    )  # fmt: skip
    existing = pa.array([f"{out.path}/b/{k}.png" for k in ("a/x", "d", "o")])
    uris = pa.chunked_array([[newcomer, owner, done_uri], [old_uri, new_uri, odd, new_uri]])
    work = plan.plan_split(uris, done, existing, out, config, "models:/f/2")
    # done at its etag (skipped while the bytes hash to it), refused (etag null): sorted by uri
    assert work.known.to_pylist() == [
        {"uri": "s3://b/./n.jpg", "etag": None},
        {"uri": newcomer, "etag": None},
        {"uri": owner, "etag": "sha256:1"},
        {"uri": done_uri, "etag": "sha256:2"},
    ]  # o.jpg (an older model's mask) and n.jpg (new) are tonight's work
    errors = dict(zip(*(work.refused.column(c).to_pylist() for c in ("uri", "error")), strict=True))
    assert f"already taken by {owner}" in errors[newcomer]
    assert "another spelling" in errors[odd]
    gone = plan.plan_split(uris, done, pa.array([], pa.string()), out, config, "models:/f/2")
    assert gone.known.column("etag").null_count == gone.known.num_rows  # masks deleted: redo
    forced = plan.plan_split(uris, done, existing, out, cfg(tmp_path, force=True), "m")
    assert forced.known.column("uri").to_pylist() == ["s3://b/./n.jpg", newcomer]


def test_split_keys_match_the_stages_key_rule():
    uris = [
        "s3://b/x.jpg",
        "/tmp/y/z.png",
        "file:///a/b.JPG",
        "gs://b/no-extension",
        "s3://b/c.d/e",
    ]
    assert plan._split_keys(pa.array(uris)).to_pylist() == [plan.split_key(u) for u in uris]
    keys = [masks.mask_key(plan.split_key(u)) for u in uris]
    vectorized, _ = plan._mask_keys(storage.locate("/o"), plan._split_keys(pa.array(uris)))
    assert vectorized.to_pylist() == keys


def test_the_stage_finds_a_uri_by_binary_search():
    from fcn.nightly.stages import _find

    uris = pa.array(["s3://b/é.jpg", "s3://b/z.jpg", "s3://b/a b.jpg", "/x", "s3://b/Z.jpg"])
    sorted_uris = uris.take(pc.sort_indices(uris))  # Arrow's order, as plan_split sorts
    assert [_find(sorted_uris, u) for u in sorted_uris.to_pylist()] == [0, 1, 2, 3, 4]
    assert _find(sorted_uris, "s3://b/m.jpg") is None
    assert _find(pa.array([], pa.string()), "x") is None


def test_older_models_compares_registry_versions_of_one_name():
    models = ["models:/f/1", "models:/f/3", "models:/g/1", "/ckpt", None, "models:/f/2"]
    assert plan.older_models(models, "models:/f/2") == ["models:/f/1", "models:/g/1", "/ckpt"]


def test_output_inside_input_is_not_listed_as_input(tmp_path):
    (tmp_path / "in" / "masks").mkdir(parents=True)
    (tmp_path / "in" / "x.jpg").write_bytes(b"x")
    (tmp_path / "in" / "masks" / "x.png").write_bytes(b"x")
    src, out = storage.locate(str(tmp_path / "in")), storage.locate(str(tmp_path / "in/masks"))
    found = plan.list_images(src, out).column("path").to_pylist()
    assert [Path(p).name for p in found] == ["x.jpg"]
    with pytest.raises(ValueError, match="must differ"):
        plan.list_images(src, src)


def test_state_files_under_the_input_do_not_make_it_parquet(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.jpg").write_bytes(b"x")
    out = storage.locate(str(tmp_path / "in" / "masks"))
    manifest.write(state.run_manifest(out, "r1"), manifest.to_table([{"uri": "u"}]))
    config = SegmentConfig(str(tmp_path / "in"), out.path, "m")
    assert not source.resolve(config.input_format, storage.locate(config.input), out).is_split


def test_unreadable_state_file_is_ignored_and_kept(tmp_path, capsys):
    out = storage.locate(str(tmp_path / "out"))
    part = state.parts_dir(out, "r1").child("a.parquet")
    manifest.write(part, manifest.to_table([{"uri": "u", "status": "ok", "time": 1.0}]))
    broken = state.parts_dir(out, "r2").child("b.parquet")
    broken.write_bytes(b"PAR1 truncated")
    table, _ = state.read(out)
    assert table.column("uri").to_pylist() == ["u"]
    assert "ignoring unreadable state file" in capsys.readouterr().err
    state.merge(out, "r3")
    assert broken.exists() and not part.exists()  # never deleted: a person should look


# --- the model actor, in process -------------------------------------------------------------


def test_predictor_masks_equal_a_direct_forward(tmp_path, model_dir):
    from fcn.nightly import stages
    from fcn.nightly.predictor import Predictor

    pictures = {"a.png": picture(64, 80, 1), "b.png": picture(64, 80, 2)}
    pictures["c.png"] = picture(72, 96, 3)
    src, out = storage.locate(str(tmp_path / "in")), storage.locate(str(tmp_path / "m"))
    rows = []
    for name, image in pictures.items():
        src.child(name).write_bytes(encode(image))
        rows.append({"uri": name, "path": src.child(name).path})
    rows.append({"uri": "gone.png", "path": src.child("gone.png").path})
    for row in rows:
        key = masks.mask_key(row["uri"])
        row.update(mask_uri=out.child(key).uri, mask_key=key, etag="e", size=1)
    config = SegmentConfig("i", "o", "m", max_batch_pixels=64 * 80)  # a and b: two forwards
    decoded = stages.read_decode(pa.Table.from_pylist(rows), src, config)
    classified = Predictor(model_dir, config)(decoded)
    parts = storage.locate(str(tmp_path / "parts"))
    palette = voc_colormap()
    out_rows = stages.encode_write(classified, out, palette, parts, "m", "run").to_pylist()
    assert [r["status"] for r in out_rows] == ["ok", "ok", "ok", "error"]
    assert "read failed" in out_rows[-1]["error"]
    for name, image in pictures.items():
        mask = np.asarray(Image.open(tmp_path / "m" / name))
        assert mask.shape == image.shape[:2]
        expected = assert_mask_of(mask, model_dir, image)
        assert len(np.unique(expected)) > 1  # the test model really varies
    first = np.asarray(Image.open(tmp_path / "m" / "a.png"))
    counts = np.bincount(first.ravel(), minlength=NUM_CLASSES)
    assert out_rows[0]["class_counts"] == counts.tolist()
    assert out_rows[0]["classes_present"] == int((counts > 0).sum())
    assert 0 < out_rows[0]["mean_margin"] <= 1 and out_rows[0]["mean_entropy"] > 0
    assert 0 <= out_rows[0]["low_confidence_fraction"] <= 1
    assert len(storage.list_files(parts.uri)) == 1  # the part is written with the batch


def test_predictor_tiles_give_the_whole_image_masks(tmp_path, model_dir):
    from fcn.nightly import stages
    from fcn.nightly.predictor import Predictor

    image = picture(500, 1000, 4)  # two tiles of 480 each way for FCN-AlexNet
    src = storage.locate(str(tmp_path / "in"))
    src.child("big.png").write_bytes(encode(image))
    rows = [{"uri": "big.png", "path": src.child("big.png").path, "mask_uri": "x",
             "mask_key": "big.png", "etag": "e", "size": 1}]  # fmt: skip
    maps = {}
    for tile in ("none", "480", "auto"):
        config = SegmentConfig("i", "o", "m", tile=tile, tile_memory_mb=64).validate()
        decoded = stages.read_decode(pa.Table.from_pylist(rows), src, config)
        out = Predictor(model_dir, config)(decoded).to_pylist()[0]
        assert out["status"] is None, out["error"]
        maps[tile] = (np.frombuffer(out["mask"], np.uint8), out["mean_entropy"])
    whole, entropy = maps["none"]
    assert_mask_of(whole, model_dir, image)
    for tiled, tiled_entropy in (maps["480"], maps["auto"]):
        assert_mask_of(tiled, model_dir, image)
        assert tiled_entropy == pytest.approx(entropy, rel=1e-4)


def test_tile_settings_are_checked_before_any_work(model_dir):
    from fcn.nightly.predictor import Predictor

    for bad in ("0", "big", "-5"):
        with pytest.raises(ValueError, match="--tile must be"):
            SegmentConfig("i", "o", "m", tile=bad).validate()
    with pytest.raises(ValueError, match="--tile-memory-mb"):
        SegmentConfig("i", "o", "m", tile_memory_mb=0).validate()
    with pytest.raises(ValueError, match="use --runtime torch for --tile N"):
        SegmentConfig("i", "o", "m", tile="512", runtime="onnxruntime").validate()
    with pytest.raises(ValueError, match="too small for FCNAlexNet: at least 480"):
        Predictor(model_dir, SegmentConfig("i", "o", "m", tile="300").validate())


def test_multi_scale_averages_to_full_size_masks(model_dir):
    from fcn.engine.inference import load_model, predict

    loaded = load_model(model_dir)
    model, spec = loaded.model, loaded.preprocessing
    images = np.stack([picture(64, 72, 7)])
    single = predict(model, images, spec)
    assert np.array_equal(predict(model, images, spec, scales=(1.0, 1.0)), single)
    multi = predict(model, images, spec, scales=(0.5, 1.0, 1.5))
    assert multi.shape == single.shape == (1, 64, 72)


# --- run() end to end on local Ray ---------------------------------------------------------


def masks_in(tmp_path):
    """Mask PNGs under tmp_path/out: folders starting with `_` (reports, state) hold none."""
    out = tmp_path / "out"
    return [p for p in out.rglob("*.png") if not p.relative_to(out).parts[0].startswith("_")]


@pytest.mark.slow
def test_run_local_incremental_and_exit_status(tmp_path, small_model_dir, local_ray):
    from fcn.nightly.driver import run

    src = tmp_path / "in"
    (src / "d").mkdir(parents=True)
    (src / "a.jpg").write_bytes(encode(picture(64, 64, 1), "JPEG"))
    (src / "d" / "b.PNG").write_bytes(encode(picture(72, 64, 2)))
    (src / "bad.jpg").write_bytes(b"oops")
    (src / "notes.txt").write_bytes(b"not listed")
    config = SegmentConfig(str(src), str(tmp_path / "out"), small_model_dir, max_error_fraction=0.5)

    first = run(config)
    assert (first.counts.done, first.counts.failed, first.counts.skipped, first.ok) == (
        2,
        1,
        0,
        True,
    )
    masks_written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in masks_in(tmp_path))
    assert masks_written == ["a.png", "d/b.png"]
    stamps = {p: p.stat().st_mtime_ns for p in masks_in(tmp_path)}
    rows = pq.read_table(first.manifest).to_pylist()
    assert {r["status"] for r in rows} == {"ok", "error"}
    assert all(r["model"] == small_model_dir for r in rows)

    second = run(config)
    assert (second.counts.done, second.counts.failed, second.counts.skipped) == (0, 0, 3)
    assert {p: p.stat().st_mtime_ns for p in masks_in(tmp_path)} == stamps

    (src / "d" / "b.PNG").write_bytes(encode(picture(72, 64, 3)))  # changed image: redone
    os.utime(src / "d" / "b.PNG", (1, 1))
    third = run(
        SegmentConfig(
            str(src),
            str(tmp_path / "out"),
            small_model_dir,
            max_error_fraction=0.0,
            retry_errors=True,
        )
    )
    assert (third.counts.done, third.counts.failed, third.counts.skipped) == (1, 1, 1)
    assert not third.ok  # 1 of 2 failed > 0.0: jobs/segment.py exits 1
    mask = np.asarray(Image.open(tmp_path / "out" / "d" / "b.png"))
    assert_mask_of(mask, small_model_dir, picture(72, 64, 3))


@pytest.mark.slow
def test_run_local_routes_rasters_to_tiled_georeferenced_masks(
    tmp_path, small_model_dir, local_ray
):
    """A GeoTIFF under the prefix goes to the raster actor, not the PNG pipeline: its mask is a
    GeoTIFF at `<key>.tif`, tiled (8 tiles of 640) yet equal to the whole image's forward, with
    the input's CRS; a broken raster is an error row, retried next night; photos beside it get
    their PNGs as ever, and the next night skips the done ones."""
    import rasterio

    from fcn.nightly.driver import run

    src, out = tmp_path / "in", tmp_path / "out"
    (src / "aerial").mkdir(parents=True)
    (src / "a.jpg").write_bytes(encode(picture(64, 64, 1), "JPEG"))
    scene = geotiff(src / "aerial" / "scene.TIFF", 680, 1000)
    (src / "broken.tif").write_bytes(b"II*\x00 not a raster")
    config = SegmentConfig(str(src), str(out), small_model_dir, tile="640", max_error_fraction=0.5)

    first = run(config)
    assert (first.counts.done, first.counts.failed) == (2, 1)
    with rasterio.open(out / "aerial" / "scene.tif") as mask:
        assert_mask_of(mask.read(1), small_model_dir, raster_rgb(scene))
        assert mask.crs.to_epsg() == RASTER_CRS_EPSG
    assert (out / "a.png").exists() and not (out / "broken.tif").exists()
    rows = {Path(r["uri"]).name: r for r in pq.read_table(first.manifest).to_pylist()}
    done = rows["scene.TIFF"]
    assert (done["status"], done["height"], done["width"]) == ("ok", 680, 1000)
    assert done["mask_uri"] == str(out / "aerial" / "scene.tif") and done["classes_present"] > 1
    assert done["class_counts"] is None and done["mean_entropy"] is None  # not for a raster
    assert rows["broken.tif"]["status"] == "error" and rows["broken.tif"]["etag"] is None

    second = run(config)  # the done raster and photo skipped; the broken raster tried again
    assert (second.counts.done, second.counts.failed, second.counts.skipped) == (0, 1, 2)


@pytest.mark.slow
def test_run_local_shares_one_raster_among_the_actors(tmp_path, small_model_dir, local_ray):
    """One raster, two actors: the raster is cut into two bands of tile rows, one per actor,
    merged into one mask equal to the whole image's forward; its parts are gone afterwards. A
    raster whose bands fail is one error row, retried the next night."""
    import rasterio

    from fcn.nightly import raster_actor
    from fcn.nightly.driver import run

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    scene = geotiff(src / "scene.tif", 1300, 700)  # 7 rows of tiles of 640
    config = SegmentConfig(str(src), str(out), small_model_dir, tile="640", concurrency=2)

    first = run(config)
    assert (first.counts.done, first.counts.failed) == (1, 0)
    with rasterio.open(out / "scene.tif") as mask:
        # A band out of place would differ in whole rows; a tile's forward and the whole
        # image's may differ at float ties (measured: 1 pixel of 910,000).
        # tests/unit/test_rasters.py holds bands to `predict` exactly.
        assert_mask_of(mask.read(1), small_model_dir, raster_rgb(scene))
        assert mask.crs.to_epsg() == RASTER_CRS_EPSG
    (row,) = pq.read_table(first.manifest).to_pylist()
    assert (row["status"], row["height"], row["width"]) == ("ok", 1300, 700)
    assert row["classes_present"] > 1 and row["mask_uri"] == str(out / "scene.tif")
    assert not list((out / raster_actor.PARTS).rglob("*.tif"))

    (src / "broken.tif").write_bytes(b"II*\x00 not a raster")
    second = run(config)  # one new raster, two actors: two bands, both failing
    assert (second.counts.done, second.counts.failed, second.counts.skipped) == (0, 1, 1)
    (row,) = pq.read_table(second.manifest).to_pylist()
    assert row["status"] == "error" and row["etag"] is None and "raster failed" in row["error"]
    assert not (out / "broken.tif").exists()


@pytest.mark.slow
def test_run_local_on_a_parquet_split_with_raster_references(tmp_path, small_model_dir, local_ray):
    """An ingested split: photos take the PNG pipeline (x.png wants x.jpg's mask key, x.jpg
    sorts first: an error row, every night); its rasters are references (`image` null,
    fcn.data.validate) that the raster actors read window by window from their `uri` into
    georeferenced masks. The next night skips the done ones; a raster gone from its bucket is
    an error row; a raster rewritten in place is segmented again."""
    import rasterio

    from fcn.data import contract
    from fcn.nightly.driver import run

    bucket = tmp_path / "bucket"
    (bucket / "aerial").mkdir(parents=True)
    scene = geotiff(bucket / "aerial" / "scene.tif", 680, 1000)
    photos = {name: picture(64, 64 + 8 * (seed == 6), seed)
              for name, seed in (("x.jpg", 5), ("y/z.png", 6), ("x.png", 7))}  # fmt: skip
    data = {**{k: encode(v) for k, v in photos.items()}, "aerial/scene.tif": None, "gone.tif": None}
    rows = [
        {"image_id": key, "split": "unlabeled", "source": "unlabeled", "image": image,
         "mask": None, "height": 64, "width": 64, "uri": str(bucket / key)}
        for key, image in data.items()
    ]  # fmt: skip
    (tmp_path / "split").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, contract.SCHEMA), tmp_path / "split" / "p.parquet")
    config = SegmentConfig(
        str(tmp_path / "split"), str(tmp_path / "out"), small_model_dir, tile="640"
    )
    config = dataclasses.replace(config, max_error_fraction=0.5)

    first = run(config)
    assert (first.counts.done, first.counts.failed) == (3, 2)
    manifest_rows = {r["uri"]: r for r in pq.read_table(first.manifest).to_pylist()}
    assert f"already taken by {bucket}/x.jpg" in manifest_rows[f"{bucket}/x.png"]["error"]
    assert "gone" in manifest_rows[f"{bucket}/gone.tif"]["error"]
    done = manifest_rows[f"{bucket}/aerial/scene.tif"]
    assert (done["status"], done["height"], done["width"]) == ("ok", 680, 1000)
    masks_at = tmp_path / "out" / str(bucket).lstrip("/")  # a split's mask key: its uri's path
    for name, image in (("x", photos["x.jpg"]), ("y/z", photos["y/z.png"])):
        assert_mask_of(np.asarray(Image.open(masks_at / f"{name}.png")), small_model_dir, image)
    with rasterio.open(masks_at / "aerial" / "scene.tif") as mask:
        assert_mask_of(mask.read(1), small_model_dir, raster_rgb(scene))
        assert mask.crs.to_epsg() == RASTER_CRS_EPSG

    second = run(config)
    assert (second.counts.done, second.counts.skipped, second.counts.failed) == (0, 3, 2)
    geotiff(bucket / "aerial" / "scene.tif", 640, 1000)  # rewritten in place
    third = run(config)
    assert (third.counts.done, third.counts.skipped, third.counts.failed) == (1, 2, 2)
    with rasterio.open(masks_at / "aerial" / "scene.tif") as mask:
        assert (mask.height, mask.width) == (640, 1000)


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
    from fcn.engine.inference import predict
    from fcn.engine.models.preprocess import CAFFE, normalize
    from fcn.engine.models.shift_stitch import dense_logits

    model = _StrideTwoNet().eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 3), dtype=np.uint8)
    got = predict(model, images, CAFFE, shift_and_stitch=True)
    with torch.no_grad():
        want = dense_logits(model, normalize(images, CAFFE)).argmax(1).numpy()
    assert got.shape == (2, 9, 11)
    np.testing.assert_array_equal(got, want)
    plain = predict(model, images, CAFFE)
    assert (plain != got).any()  # nearest upsampling of coarse cells is not the dense output


def test_raster_parts_of_this_run_and_of_long_dead_runs_are_removed(tmp_path):
    """A night removes its own raster parts and those of runs started over two days ago (killed
    mid-raster); a night still running (started recently) keeps its parts."""
    import time

    from fcn.nightly import raster_actor

    output = storage.locate(str(tmp_path))
    now = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    hours_ago = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 3 * 3600))
    runs = {"mine": f"{now}-aaaa", "killed": "20260101T000000Z-bbbb", "live": f"{hours_ago}-cc"}
    for run_id in runs.values():
        part = tmp_path / raster_actor.PARTS / run_id / "x-000-of-002.tif"
        part.parent.mkdir(parents=True)
        part.write_bytes(b"band")
    raster_actor.remove_parts(output, runs["mine"])
    left = {p.name for p in (tmp_path / raster_actor.PARTS).iterdir()}
    assert left == {runs["live"]}


@pytest.mark.parametrize(("rasters", "actors", "bands"), [(1, 1, 1), (1, 4, 4), (3, 4, 2),
                                                          (4, 4, 1), (9, 4, 1)])  # fmt: skip
def test_rasters_are_cut_only_as_far_as_the_actors_need(rasters, actors, bands):
    from fcn.nightly import raster_actor

    assert raster_actor.bands_per_raster(rasters, actors) == bands
