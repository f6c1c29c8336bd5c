"""The evaluate job through `ray job submit` on the test Ray head (local files, an SQLite MLflow
store: no S3 or MLflow server needed).

1. A checkpoint whose config.json lacks `preprocessing` fails in the driver before Ray starts:
   exit status 2, one line naming the field, no traceback, no MLflow run.
2. Two Ray Train workers score a split of 7 images (4 + 3): the logged scores equal one
   process evaluating the same split; the run is tagged with the model, the data's digest
   and the code's commit.
"""

from __future__ import annotations

import pytest
from helpers_data import varied_model, write_split

from fcn import tracking
from fcn.engine import checkpoint, metrics
from fcn.engine.inference import load_model
from fcn.evaluation.score import evaluate

pytestmark = pytest.mark.integration

NUM_CLASSES = 4
EXPERIMENT = "evaluate-it"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate-it")
    data = str(root / "data")
    write_split(data, "val", 7, size=[40, 56], classes=(1, 2, 3), files=2)
    # FCN-32s at 1/16 width (1 MB): each worker and this process load it (FCN-AlexNet's
    # 230 MB cost each of them seconds; what is checked here is the scoring, not the net).
    state = varied_model(NUM_CLASSES, "fcn32s", biases=True, width=0.0625).state_dict()
    config = {"model": "fcn32s", "num_classes": NUM_CLASSES, "width": 0.0625}
    broken = str(root / "broken")
    checkpoint.save(state, config, broken)  # no "preprocessing": breaks the contract
    good = str(root / "good")
    checkpoint.save(state, {**config, "preprocessing": "torchvision"}, good)
    store = f"sqlite:///{root / 'mlflow.db'}"
    return {"data": data, "broken": broken, "good": good, "store": store}


def runs(store: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def submit(ray_head, setup, model: str) -> tuple[int, str]:
    args = ["jobs/evaluate.py", "--data", setup["data"], "--model", model, "--workers", "2",
            "--experiment", EXPERIMENT]  # fmt: skip
    # `ray job submit` leaves .git behind: the submitter names the commit.
    env = {"MLFLOW_TRACKING_URI": setup["store"], tracking.GIT_COMMIT_ENV: tracking.git_commit()}
    return ray_head.submit(args, env=env, timeout=600)


@pytest.mark.slow
def test_a_checkpoint_missing_a_field_fails_before_ray_starts(ray_head, setup):
    rc, logs = submit(ray_head, setup, setup["broken"])
    assert rc != 0 and "failed with exit code 2" in logs, logs[-4000:]
    # `ray job submit` streams the job's output, then repeats it in the failure status.
    errors = {line for line in logs.splitlines() if line.startswith("error: ")}
    assert len(errors) == 1 and "lacks 'preprocessing'" in errors.pop(), logs[-4000:]
    assert "Traceback" not in logs and "Connecting to existing Ray cluster" not in logs
    assert runs(setup["store"]) == []


@pytest.mark.slow
def test_two_workers_score_like_one_process(ray_head, setup):
    rc, logs = submit(ray_head, setup, setup["good"])
    assert rc == 0, logs[-4000:]
    (run,) = runs(setup["store"])
    assert run.info.status == "FINISHED"
    # What a reader needs: the model, the data it scored (digest), the code; no unset params.
    tags = run.data.tags
    assert tags[tracking.TAG_MODEL_URI] == setup["good"]
    assert tags["eval_digest"] == tracking.dataset_digest(f"{setup['data']}/val")
    assert tags[tracking.TAG_SOURCE_NAME] == "jobs/evaluate.py"
    assert tags[tracking.TAG_GIT_COMMIT] == tracking.git_commit()
    assert "None" not in run.data.params.values() and run.data.params["workers"] == "2"
    loaded = load_model(setup["good"])
    scores, hist, _ = evaluate(
        loaded.model, setup["data"], "val", loaded.preprocessing, loaded.num_classes
    )
    assert hist.sum() > 0
    expected = metrics.named_scores(scores, loaded.classes.names)
    assert run.data.metrics == pytest.approx(expected, rel=1e-12)
