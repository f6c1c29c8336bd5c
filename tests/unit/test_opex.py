"""Operator experience: the train and ingest jobs refuse bad inputs in the driver with exit
status 2 and one line, before Ray starts, an MLflow run exists or any output is written."""

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fcn.config import IngestConfig, TrainConfig, build_parser
from fcn.engine import checkpoint
from tests.helpers_data import varied_model, write_split

REPO = Path(__file__).resolve().parents[2]


def _job(name: str):
    """jobs/<name>.py as a module (the jobs are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _refused(job: str, argv: list[str], capsys) -> str:
    """The one line a job printed when it exited 2; fails if Ray was started."""
    import ray

    assert _job(job).main(argv) == 2
    assert not ray.is_initialized()
    err = capsys.readouterr().err
    # MLflow may log its own store set-up lines first; the job's message is one line.
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("data"))
    write_split(root, "train", 4)
    write_split(root, "val", 2)
    return root


@pytest.fixture()
def tracking(tmp_path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def _no_runs(tracking: str) -> None:
    """No MLflow run was started (the store was never even created)."""
    assert not os.path.exists(tracking.removeprefix("sqlite:///"))


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--workers", "0"], "--workers must be >= 1"),
        (["--iterations", "-5"], "--iterations must be >= 1"),
        (["--crop-size", "0"], "--crop-size"),
        (["--model", "fcn-alexnet", "--width", "0.25"], "VGG16 models only, not fcn-alexnet"),
        (["--init", "imagenet", "--width", "0.5"], "--width 1 only"),
        (["--workers", "3", "--crop-size", "32", "--batch-size", "6"], "holds 4 rows"),
        (["--val-split", "missing"], "'missing'"),
        (["--init", "nowhere/weights.pth"], "nowhere/weights.pth: no such weights file"),
        (["--init", "nowhere/checkpoint"], "nowhere/checkpoint"),
    ],
)
def test_train_refuses_bad_settings_in_the_driver(data, tracking, flags, named, capsys):
    err = _refused("train", ["--data", data, *flags], capsys)
    assert named in err
    _no_runs(tracking)


def test_train_refuses_a_corrupt_weights_file(data, tracking, capsys):
    corrupt = Path(tracking.removeprefix("sqlite:///")).parent / "vgg16.pth"
    corrupt.write_bytes(b"not a torch file")
    err = _refused("train", ["--data", data, "--init", str(corrupt)], capsys)
    assert f"--init {corrupt}: not a weights file torch can load" in err


def test_train_refuses_missing_data_and_a_wrong_schema(tmp_path, tracking, capsys):
    assert "no Parquet files" in _refused("train", ["--data", "/nonexistent/parquet"], capsys)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image": [b"x"], "label": [b"y"]}), buffer)
    (tmp_path / "wrong" / "train").mkdir(parents=True)
    (tmp_path / "wrong" / "train" / "part-0.parquet").write_bytes(buffer.getvalue())
    err = _refused("train", ["--data", str(tmp_path / "wrong")], capsys)
    assert "lacks column(s) mask" in err
    _no_runs(tracking)


def test_train_refuses_imagenet_init_without_the_weights_file(data, tracking, monkeypatch,
                                                              capsys):  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(Path(tracking.removeprefix("sqlite:///")).parent))
    err = _refused("train", ["--data", data, "--init", "imagenet"], capsys)
    assert "--init imagenet" in err and "vgg16" in err
    _no_runs(tracking)


def test_train_refuses_an_unknown_model_alias(data, tracking, capsys):
    err = _refused("train", ["--data", data, "--init", "models:/fcn-demo@champ"], capsys)
    assert "models:/fcn-demo@champ does not resolve" in err


def test_relative_paths_become_absolute(data, monkeypatch):
    from fcn.training.driver import validate

    monkeypatch.chdir(os.path.dirname(data))
    config = validate(TrainConfig(data=os.path.basename(data), storage="runs")).config
    assert config.data == data and config.storage == os.path.join(os.path.dirname(data), "runs")


@pytest.mark.parametrize("source", ["--unlabeled", "--voc", "--sbd"])
def test_ingest_refuses_a_missing_source(tmp_path, source, capsys):
    out = tmp_path / "out"
    err = _refused("ingest", [source, "/nonexistent/images", "--output", str(out)], capsys)
    assert "/nonexistent/images" in err
    assert not out.exists()  # no _SUCCESS, no shards


def test_ingest_refuses_a_prefix_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    out = tmp_path / "out"
    err = _refused("ingest", ["--unlabeled", str(tmp_path / "empty"), "--output", str(out)],
                   capsys)  # fmt: skip
    assert "no images" in err and not out.exists()


@pytest.mark.parametrize("job", sorted(p.stem for p in (REPO / "jobs").glob("*.py")))
def test_help_is_fast_and_has_an_example(job):
    """--help imports neither torch nor Ray (seconds saved on every typo)."""
    code = (
        f"import sys, runpy; sys.argv = ['{job}', '--help']\n"
        f"try:\n    runpy.run_path('jobs/{job}.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('HEAVY', [m for m in ('torch', 'ray', 'mlflow') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert "HEAVY []" in done.stdout, done.stdout[-500:] + done.stderr[-2000:]
    assert "python jobs/" in done.stdout.split("options:")[-1]  # an example after the flags


def test_the_segment_driver_plans_a_night_without_torch(tmp_path):
    """The nightly driver checks the checkpoint and names the actor classes to Ray Data; only
    the actors load the model: a driver without torch starts ~1 s sooner every night and
    stays smaller beside a million-image plan."""
    uri = str(tmp_path / "ckpt")
    config = {"model": "fcn32s", "num_classes": 3, "preprocessing": "caffe", "width": 0.0625}
    checkpoint.save(varied_model(3, "fcn32s", width=0.0625).state_dict(), config, uri)
    code = (
        "import sys\nfrom fcn.nightly import driver\nfrom fcn.engine import checkpoint\n"
        f"config = checkpoint.check({uri!r})\n"
        "print(config.preprocessing['name'], driver.Predictor.__name__, "
        "[m for m in ('torch', 'torchvision', 'onnx') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.strip() == "caffe Predictor []", done.stdout + done.stderr[-2000:]


def test_flags_are_grouped():
    parser = build_parser(TrainConfig)
    titles = {g.title: [a.dest for a in g._group_actions] for g in parser._action_groups}
    assert {"data", "model", "optimisation", "cluster", "tracking"} <= set(titles)
    assert "lr" in titles["optimisation"] and "preset" in titles["optimisation"]
    assert "workers" in titles["cluster"] and "experiment" in titles["tracking"]
    ingest = build_parser(IngestConfig)
    data = next(g for g in ingest._action_groups if g.title == "data")
    assert "preset" in [a.dest for a in data._group_actions]


def test_training_progress_line_has_eta_lr_and_rate():
    from fcn.training.progress import Throughput as _Throughput

    meter = _Throughput(start=0, images_per_step=4, print_every=1)
    assert meter.line(1, 12, 0.5, 1e-4, now=meter.began + 1).endswith("eta ?")
    meter.steps, meter.seconds = 10, 20.0  # 2 images/s after warm-up
    meter.paced = (1, meter.began + 20)  # the first step ended after 20 s of set-up
    line = meter.line(6, 12, 0.4457, 1e-4, now=meter.began + 30)  # 5 steps in 10 s
    assert line == "iter 6/12 (50%) loss 0.4457 lr 0.0001 2.0 images/s elapsed 0:30 eta 0:12"
    resumed = _Throughput(start=100, images_per_step=4, print_every=1)
    resumed.paced = (101, resumed.began)
    assert resumed.line(111, 4000, 0.1, 1e-4, now=resumed.began + 10).endswith("eta 1:04:49")


def test_model_choices_are_the_models_that_build():
    """fcn.config spells the names out (--help imports no torch): the same list as fcn.models."""
    import dataclasses

    from fcn.engine.models import MODEL_NAMES, backbone_of

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "model")
    assert field.metadata["choices"] == MODEL_NAMES
    assert [backbone_of(n) for n in ("fcn8s", "fcn-alexnet")] == ["vgg16", "alexnet"]
    with pytest.raises(ValueError, match="unknown model 'fcn4s'"):
        backbone_of("fcn4s")


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("data/x", "{cwd}/data/x"),
        ("~/x", "{home}/x"),
        ("/abs/x", "/abs/x"),
        ("s3://bucket/x", "s3://bucket/x"),
        ("file:///abs/x", "file:///abs/x"),
        ("models:/fcn-demo@champion", "models:/fcn-demo@champion"),
        ("runs:/abc/checkpoint", "runs:/abc/checkpoint"),
        (None, None),
    ],
)
def test_one_absolute_for_every_job(uri, expected, tmp_path, monkeypatch):
    from fcn.storage import absolute

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if expected is not None:
        expected = expected.format(cwd=tmp_path, home=tmp_path / "home")
    assert absolute(uri) == expected


# --- what a person looks at: legends, overlays (segment --save-overlays) ---------------------

GRAY = 100


def _scene():
    """A gray 40 x 60 image; its mask: class 1 top-left, class 3 bottom-right, a void row."""
    from fcn.engine.classes import voc_classes

    image = np.full((40, 60, 3), GRAY, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:25] = 1
    mask[25:35, 30:55] = 3
    mask[0] = 255
    return image, mask, voc_classes()


def _has_color(array, color) -> bool:
    return bool((array.reshape(-1, 3) == np.asarray(color, np.uint8)).all(axis=1).any())


def test_overlay_blends_the_class_colours_over_a_legend_of_the_classes_present():
    from fcn.engine.visualize import overlay

    image, mask, classes = _scene()
    palette = classes.palette()
    out = overlay(image, mask, palette, classes.names)
    assert out.shape[1] == 60 and out.shape[0] > 40  # the legend goes underneath
    picture, strip = out[:40], out[40:]
    aeroplane = (np.asarray(palette[1], float) + GRAY) / 2
    assert np.array_equal(picture[10, 10], aeroplane.round().astype(np.uint8))
    assert np.array_equal(picture[0, 0], [GRAY] * 3)  # void keeps the image
    assert np.array_equal(picture[20, 40], [GRAY // 2] * 3)  # background: black, half
    for value in (0, 1, 3):  # background, aeroplane, boat: the swatches
        assert _has_color(strip, palette[value]), classes.names[value]
    assert not _has_color(strip, palette[2])  # bicycle is not in the mask


def test_legend_wraps_and_sample_panel_gets_one_with_names():
    from fcn.engine.visualize import legend, sample_panel

    image, mask, classes = _scene()
    palette = classes.palette()
    one_row = legend([1], classes.names, palette, 300)
    many = legend(list(range(12)), classes.names, palette, 300)
    assert many.shape[0] > one_row.shape[0] and many.shape[1] == 300
    pred = np.where(mask == 3, 4, mask).astype(np.uint8)  # boat predicted as bottle
    plain = sample_panel(image, mask, pred, palette)
    assert plain.shape == (40, 180, 3)  # image | truth | prediction
    panel = sample_panel(image, mask, pred, palette, classes.names)
    assert np.array_equal(panel[:40], plain) and panel.shape[0] > 40
    for value in (1, 3, 4):  # classes of the truth and of the prediction
        assert _has_color(panel[40:], palette[value])


def test_overlays_go_to_the_mask_keys_under_their_own_folder(tmp_path):
    from PIL import Image

    from fcn import storage
    from fcn.engine import images
    from fcn.engine.visualize import overlay, png_bytes
    from fcn.nightly import overlays, source

    image, mask, classes = _scene()
    split, out, shown = tmp_path / "split", tmp_path / "out", tmp_path / "shown"
    split.mkdir()
    uris = ["s3://bucket/raw/x.jpg", "s3://bucket/raw/y/z.png"]
    encoded = [png_bytes(image), b"not an image"]
    pq.write_table(pa.table({"uri": uris, "image": encoded}), split / "part-0.parquet")
    mask_uris = [str(out / "bucket/raw/x.png"), str(out / "bucket/raw/y/z.png")]
    for uri in mask_uris:
        storage.write_bytes(uri, images.encode_mask(mask, classes.palette()))
    where = {name: storage.locate(str(p)) for name, p in (("in", split), ("out", out),
                                                           ("shown", shown))}  # fmt: skip
    read = source.resolve("parquet", where["in"], where["out"]).image_bytes
    batch = pa.table({"uri": uris, "mask_uri": mask_uris})
    result = overlays.write_batch(batch, read, where["shown"], where["out"], classes, 10**6)
    rows = result.to_pylist()
    assert rows[0] == {"uri": uris[0], "overlay_uri": str(shown / "bucket/raw/x.png"),
                       "error": None}  # fmt: skip
    assert "BadImage" in rows[1]["error"]  # one bad image is one error row, not a failed night
    written = np.asarray(Image.open(shown / "bucket/raw/x.png"))
    assert np.array_equal(written, overlay(image, mask, classes.palette(), classes.names))
    assert sorted(p.name for p in shown.rglob("*.png")) == ["x.png"]


@pytest.mark.parametrize("shown", ["out", "out/_overlays", "in/x", "", "elsewhere"])
def test_overlays_must_lie_apart_from_input_and_output(tmp_path, shown):
    from fcn import storage
    from fcn.nightly import overlays

    at = {name: storage.locate(str(tmp_path / name)) for name in ("in", "out")}
    folder = storage.locate(str(tmp_path / shown) if shown else str(tmp_path))
    if shown == "elsewhere":
        overlays.check(folder, at["in"], at["out"])
        return
    with pytest.raises(ValueError, match="--save-overlays .* overlaps --(output|input)"):
        overlays.check(folder, at["in"], at["out"])
