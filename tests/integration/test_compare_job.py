"""jobs/compare.py against a real MLflow server (artifacts in a real S3 API) holding two real
training runs: `jobs/train.py` submitted with `ray job submit`, each registering its best
checkpoint.

The runs are short (quarter-width VGG16 FCNs from scratch, a few steps, 1 worker) and differ in
model and validation subset, so their best mean IUs differ; the expected order is the one the
MLflow server holds, and compare must reproduce it. Different validation subsets are different
validation data: once training records the val digest, --promote must refuse to move the
champion between them and say why.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers_data import write_split

from fcn import tracking
from fcn.engine import checkpoint

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "compare-it"
MODEL = "fcn-compare-it"
# (run name, model, val images): different subsets give different scores, even this early.
# Two runs: an order to reproduce and two val datasets not to rank as one (each run is a
# training job of about a minute).
RUNS = (("r32", "fcn32s", 3), ("r8", "fcn8s", 7))


def train(ray_head, s3, env, data, name, model, val_limit) -> None:
    rc, logs = ray_head.submit(
        ["jobs/train.py", "--data", data, "--storage", s3.uri("compare-it/runs"), "--name", name,
         "--experiment", EXPERIMENT, "--registered-model", MODEL, "--model", model,
         "--width", "0.25", "--preset", "fast", "--num-classes", "3", "--workers", "1",
         "--iterations", "4", "--eval-every", "2", "--val-limit", str(val_limit)],
        env=env, timeout=600,
    )  # fmt: skip
    assert rc == 0, logs[-4000:]


def test_compare_orders_runs_writes_outputs_and_promotes(ray_head, s3, mlflow_server):
    data = s3.uri("compare-it/data")
    write_split(data, "train", 6, size=(64, 64), classes=(1, 2), seed=0)
    write_split(data, "val", 7, size=(64, 64), classes=(1, 2), seed=1)
    env = {**s3.env, **mlflow_server.env}
    for name, model, val_limit in RUNS:
        train(ray_head, s3, env, data, name, model, val_limit)

    client = tracking.client()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {name for name, _, _ in RUNS}
    best = {name: run.data.metrics["best_mean_iu"] for name, run in runs.items()}
    assert len(set(best.values())) == len(RUNS), best  # distinct, so the order is well defined
    expected = sorted(best, key=best.get, reverse=True)
    worst = expected[-1]
    worst_version = client.search_model_versions(f"run_id = '{runs[worst].info.run_id}'")[0]
    # Point the champion at the worst run, as if someone had promoted it by hand.
    client.set_registered_model_alias(MODEL, tracking.CHAMPION, worst_version.version)

    output = s3.uri("reports/compare-it")
    env = {**s3.env, **mlflow_server.env}
    done = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "compare.py"), "--experiment", EXPERIMENT,
         "--output", output, "--promote", "--log-artifacts", "--top", str(len(RUNS))],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    digests = {run.data.tags.get(tracking.TAG_VAL_DIGEST) for run in runs.values()}
    # Runs from a train job that records no val digest compare as one group (the old layout).
    fair = len(digests) == 1
    assert done.returncode == (0 if fair else 2), done.stdout + done.stderr
    table = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "|---" not in line
    ]
    names = [line.split("|")[2].strip() for line in table[1:]]
    assert names == expected, done.stdout

    keys = s3.keys("reports/compare-it/")
    assert {k.rsplit("/", 1)[-1] for k in keys} == {
        "comparison.csv", "comparison.md", "mean_iu_curves.png", "per_class_iu.png",
    }  # fmt: skip
    body = s3.client().get_object(Bucket=s3.bucket, Key="reports/compare-it/comparison.csv")
    rows = list(csv.DictReader(io.StringIO(body["Body"].read().decode())))
    assert [r["run"] for r in rows] == expected
    assert [float(r["best_mean_iu"]) for r in rows] == pytest.approx([best[n] for n in expected])
    for row in rows:  # the final mean IU is the last evaluation's, at iteration 4
        final = client.get_metric_history(runs[row["run"]].info.run_id, "mean_iu")[-1]
        assert final.step == 4 and float(row["mean_iu"]) == pytest.approx(final.value)
        assert row["model"] == dict(((n, m) for n, m, _ in RUNS))[row["run"]]
    for png in ("mean_iu_curves.png", "per_class_iu.png"):
        data = s3.client().get_object(Bucket=s3.bucket, Key=f"reports/compare-it/{png}")
        assert data["Body"].read().startswith(b"\x89PNG\r\n\x1a\n")

    champion = client.get_model_version_by_alias(MODEL, tracking.CHAMPION)
    if fair:
        assert champion.run_id == runs[expected[0]].info.run_id
        assert f"was {worst_version.version}" in done.stdout
    else:  # two val subsets, two digests: the champion stays, and compare says why
        assert champion.run_id == runs[worst].info.run_id
        assert "champion unchanged" in done.stderr and "not comparable" in done.stderr
        assert f"validated on {len(RUNS)} different val datasets" in done.stdout
    # The champion is a loadable checkpoint fetched through the registry.
    state, config = checkpoint.load(tracking.resolve_checkpoint(f"models:/{MODEL}@champion"))
    assert config.model == champion.tags["model"] and config.width == 0.25
    assert "score_fr.weight" in state

    comparison_runs = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        filter_string="tags.`fcn.comparison` = 'true'",
    )
    assert len(comparison_runs) == 1
    logged = {a.path for a in client.list_artifacts(comparison_runs[0].info.run_id, "comparison")}
    assert "comparison/per_class_iu.png" in logged
