"""The training job through `ray job submit` on the test Ray head, S3 server and MLflow server.

1. 2 CPU workers train FCN-32s from Parquet on S3; one worker is killed (injected fault) right
   after the first checkpoint: the group restarts from it, no iteration runs twice, one MLflow
   run holds the whole history, and the best checkpoint is registered as the champion. The
   crops come through Ray Data's pipeline (`--loader ray-data`), which the other tests' small
   splits skip.
2. jobs/evaluate.py on the champion, in its driver (`--workers 0`), reproduces the registered
   mean IU.

Sizes are chosen for 2 CPU cores: 64 px images, FCN-32s from scratch at --width 0.25, 30
steps: this file tests the plumbing. That training learns (mean IU well above predicting
background everywhere) is the demo's test (tests/integration/test_opex_job.py: 2 Ray Train
workers, mean IU >= 0.6); a job killed as a whole and resubmitted resumes its run in
tests/integration/test_multinode.py.
"""

from __future__ import annotations

import os
import re

import fault_drill  # this folder's test-only hook, imported here for its names
import pytest
from helpers_data import write_split

from fcn import tracking
from fcn.engine import checkpoint

pytestmark = pytest.mark.integration

ITERATIONS, EVAL_EVERY = 30, 10
CLASSES = (1, 2)  # background + 2 object classes
MODEL_NAME = "fcn-it"
DRILL_JOB = "tests/integration/train_with_drill.py"  # jobs/train.py + a fault on demand


@pytest.fixture(scope="module")
def data(s3):
    root = s3.uri("train-it/data")
    write_split(root, "train", 24, size=(64, 64), classes=CLASSES, seed=0)
    write_split(root, "val", 7, size=(64, 64), classes=CLASSES, seed=1)  # odd on purpose
    return root


@pytest.fixture(scope="module")
def env(s3, mlflow_server):
    return {**s3.env, **mlflow_server.env}


def train_args(data, s3, name, *extra):
    return [
        DRILL_JOB, "--data", data, "--storage", s3.uri("train-it/runs"),
        "--name", name, "--experiment", "train-it", "--registered-model", MODEL_NAME,
        "--workers", "2", "--cpus-per-worker", "1", "--preset", "fast", "--num-classes", "3",
        "--iterations", str(ITERATIONS), "--eval-every", str(EVAL_EVERY), "--width", "0.25",
        "--class-weights", "balanced-sqrt", *extra,
    ]  # fmt: skip


def why(logs: str) -> str:
    """The lines that explain a failed job (progress, restores, errors) and the tail."""
    keys = ("iter ", "restored", "fault", "Error", "error:", "killed", "Traceback")
    picked = [line for line in logs.splitlines() if any(k in line for k in keys)]
    return "\n".join(picked[-60:]) + "\n--- tail ---\n" + logs[-3000:]


def mlflow_run(name):
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("train-it")
    runs = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"expected one MLflow run named {name}, got {len(runs)}"
    return client, runs[0]


def steps(client, run_id, metric):
    return [m.step for m in client.get_metric_history(run_id, metric)]


def test_train_with_worker_failure(ray_head, s3, data, env):
    rc, logs = ray_head.submit(
        # Ray Data's pipeline (a split this small would skip it): split over two workers and
        # started again with the group.
        train_args(data, s3, "accept", "--model", "fcn32s", "--loader", "ray-data"),
        # Two iterations past the first checkpoint, once Ray Train has registered it.
        env={**env, fault_drill.AT_ENV: str(EVAL_EVERY + 2)},
        timeout=900,
    )
    assert rc == 0, why(logs)
    assert "[fault injection]" in logs
    assert f"restored from checkpoint at iteration {EVAL_EVERY}" in logs, why(logs)

    client, run = mlflow_run("accept")
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model"] == "fcn32s" and params["workers"] == "2"
    assert params["recipe.optimizer"] == "adam" and "AWS_SECRET_ACCESS_KEY" not in str(params)
    # Every iteration logged; only the 2 since the checkpoint ran twice, not all from zero.
    logged = steps(client, run_id, "train_loss")
    assert set(logged) == set(range(1, ITERATIONS + 1)) and len(logged) <= ITERATIONS + 2
    assert steps(client, run_id, "mean_iu") == list(range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY))
    history = [m.value for m in client.get_metric_history(run_id, "mean_iu")]
    assert all(0 <= v <= 1 for v in history)
    assert run.data.metrics["best_mean_iu"] == pytest.approx(max(history))
    for name in ("pixel_acc", "mean_acc", "fw_iu", "iu_0", "iu_1", "iu_2"):  # 3 classes: 0..2
        assert name in run.data.metrics
    assert "None" not in params.values()  # unset settings are no params
    assert run.data.tags[tracking.TAG_SOURCE_NAME] == DRILL_JOB  # the script submitted
    # Panels: MLflow image series `val/<image id>` (a step slider in the UI), at each eval.
    layout = r"images/val~\S+\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+(\.png|\+compressed\.webp)"
    panels = [re.fullmatch(layout, a.path) for a in client.list_artifacts(run_id, "images")]
    assert panels and all(panels), client.list_artifacts(run_id, "images")
    assert {int(p[1]) for p in panels} == set(range(EVAL_EVERY, ITERATIONS + 1, EVAL_EVERY))
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert version.run_id == run_id
    # The version is an MLflow model whose artifact is the checkpoint directory.
    resolved = tracking.resolve_checkpoint(f"models:/{MODEL_NAME}/{version.version}")
    assert sorted(os.listdir(resolved)) == ["config.json", "model.pt"]
    assert checkpoint.check(resolved).num_classes == 3
    keys = s3.keys("train-it/runs/accept/")
    assert "train-it/runs/accept/best/config.json" in keys
    assert any(k.endswith(f"checkpoint_{ITERATIONS:06d}/training_state.pt") for k in keys)


def test_evaluate_job_reproduces_the_registered_score(ray_head, s3, data, env):
    rc, logs = ray_head.submit(
        # In the job's driver (Ray Train's local mode): what is checked is the score, and
        # workers score like one process (tests/integration/test_evaluate_job.py).
        ["jobs/evaluate.py", "--data", data, "--split", "val", "--workers", "0",
         "--model", f"models:/{MODEL_NAME}@champion", "--experiment", "train-it-eval"],
        env=env, timeout=600,
    )  # fmt: skip
    assert rc == 0, why(logs)
    from mlflow import MlflowClient

    client = MlflowClient()
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    experiment = client.get_experiment_by_name("train-it-eval")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["mean_iu"] == pytest.approx(float(version.tags["mean_iu"]), abs=1e-5)
