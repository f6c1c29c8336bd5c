"""jobs/compare.py against a real MLflow server (artifacts in a real S3 API) holding three
training runs, each with a registered model version made from a real checkpoint.

The runs are logged through fcn.tracking, the calls the train job itself makes, following
the metric contract (train_loss, pixel_acc, mean_acc, mean_iu, fw_iu, best_mean_iu,
iu_<class>; step = iteration; every setting a param). Three real jobs/train.py runs take
minutes each on 2 shared cores; these take seconds and exercise the same store and names.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fcn import checkpoint, tracking

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("background", "aeroplane", "bicycle")
EXPERIMENT = "compare-it"
MODEL = "fcn-compare-it"


def train_like(tmp_path, name: str, model: str, lr: float, curve: list[float]) -> str:
    """One run as jobs/train.py leaves it: params, per-evaluation metrics, best checkpoint
    registered (fcn.tracking.register_checkpoint), run FINISHED."""
    run_id = tracking.start_run(EXPERIMENT, name, tags={tracking.TAG_STORAGE: str(tmp_path)})
    tracking.log_params(run_id, {"model": model, "lr": lr, "name": name, "iterations": 6})
    best, best_step = -1.0, 0
    for i, mean_iu in enumerate(curve, 1):
        step = 2 * i
        ius = {f"iu_{c}": mean_iu * (0.5 + k / 2) for k, c in enumerate(CLASSES)}
        tracking.log_metrics(run_id, {"train_loss": 2.0 - mean_iu}, step)
        tracking.log_metrics(
            run_id,
            {"mean_iu": mean_iu, "pixel_acc": 0.6 + mean_iu / 3, "mean_acc": mean_iu + 0.02,
             "fw_iu": mean_iu + 0.1, **ius},
            step,
        )  # fmt: skip
        if mean_iu > best:
            best, best_step = mean_iu, step
        tracking.log_metrics(run_id, {"best_mean_iu": best}, step)
    # A real (tiny) model's checkpoint, written through the checkpoint contract.
    layer = torch.nn.Conv2d(3, len(CLASSES), 1)
    local = tmp_path / name / "best"
    config = {"model": model, "num_classes": len(CLASSES), "iteration": best_step, "lr": lr}
    checkpoint.save(layer.state_dict(), config, str(local))
    tracking.register_checkpoint(run_id, str(local), MODEL, best)
    tracking.end_run(run_id, "FINISHED")
    return run_id


def test_compare_orders_runs_writes_outputs_and_promotes(s3, mlflow_server, tmp_path):
    ids = {
        "mid": train_like(tmp_path, "mid", "fcn16s", 1e-4, [0.20, 0.35, 0.30]),
        "best": train_like(tmp_path, "best", "fcn8s", 1e-5, [0.30, 0.50, 0.55]),
        "low": train_like(tmp_path, "low", "fcn32s", 1e-3, [0.10, 0.15, 0.12]),
    }
    client = tracking.client()
    low_version = client.search_model_versions(f"run_id = '{ids['low']}'")[0].version
    client.set_registered_model_alias(MODEL, tracking.CHAMPION, low_version)  # the wrong one

    output = s3.uri("reports/compare-it")
    env = {**s3.env, **mlflow_server.env}
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "compare.py"), "--experiment", EXPERIMENT,
         "--output", output, "--promote", "--log-artifacts", "--top", "3"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    table = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "|---" not in line
    ]
    names = [line.split("|")[2].strip() for line in table[1:]]
    assert names == ["best", "mid", "low"], done.stdout

    keys = s3.keys("reports/compare-it/")
    assert {k.rsplit("/", 1)[-1] for k in keys} == {
        "comparison.csv", "comparison.md", "mean_iu_curves.png", "per_class_iu.png",
    }  # fmt: skip
    body = s3.client().get_object(Bucket=s3.bucket, Key="reports/compare-it/comparison.csv")
    rows = list(csv.DictReader(io.StringIO(body["Body"].read().decode())))
    assert [r["run"] for r in rows] == ["best", "mid", "low"]
    assert [float(r["best_mean_iu"]) for r in rows] == pytest.approx([0.55, 0.35, 0.15])
    assert float(rows[1]["mean_iu"]) == pytest.approx(0.30)  # final, below its best
    for png in ("mean_iu_curves.png", "per_class_iu.png"):
        data = s3.client().get_object(Bucket=s3.bucket, Key=f"reports/compare-it/{png}")
        assert data["Body"].read().startswith(b"\x89PNG\r\n\x1a\n")

    champion = client.get_model_version_by_alias(MODEL, tracking.CHAMPION)
    assert champion.run_id == ids["best"]
    assert f"was {low_version}" in done.stdout
    # The champion is a loadable checkpoint of the best run, fetched through the registry.
    state, config = checkpoint.load(tracking.resolve_checkpoint(f"models:/{MODEL}@champion"))
    assert config["model"] == "fcn8s" and set(state) == {"weight", "bias"}

    comparison_runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string="tags.`fcn.comparison` = 'true'",
    )
    assert len(comparison_runs) == 1
    logged = {a.path for a in client.list_artifacts(comparison_runs[0].info.run_id, "comparison")}
    assert "comparison/per_class_iu.png" in logged
