"""Operator experience: the train and ingest jobs refuse bad inputs in the driver with exit
status 2 and one line, before Ray starts, an MLflow run exists or any output is written."""

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fcn.config import IngestConfig, TrainConfig, build_parser
from tests.helpers_data import write_split

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
    from fcn.train import validate

    monkeypatch.chdir(os.path.dirname(data))
    config, _, _ = validate(TrainConfig(data=os.path.basename(data), storage="runs"))
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


@pytest.mark.parametrize("job", ["train", "ingest", "compare", "demo"])
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
    from fcn.train import _Throughput

    meter = _Throughput(start=0, images_per_step=4, print_every=1)
    assert meter.line(1, 12, 0.5, 1e-4, now=meter.began + 1).endswith("eta ?")
    meter.steps, meter.seconds = 10, 20.0  # 2 images/s after warm-up
    meter.paced = (1, meter.began + 20)  # the first step ended after 20 s of set-up
    line = meter.line(6, 12, 0.4457, 1e-4, now=meter.began + 30)  # 5 steps in 10 s
    assert line == "iter 6/12 (50%) loss 0.4457 lr 0.0001 2.0 images/s elapsed 0:30 eta 0:12"
    resumed = _Throughput(start=100, images_per_step=4, print_every=1)
    resumed.paced = (101, resumed.began)
    assert resumed.line(111, 4000, 0.1, 1e-4, now=resumed.began + 10).endswith("eta 1:04:49")
