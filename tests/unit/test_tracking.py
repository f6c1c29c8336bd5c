"""MLflow run lifecycle, params, registry and the champion alias, on a local sqlite store."""

import pytest
import torch

from fcn import checkpoint, tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts of a local store land under here
    return uri


def _status(run_id):
    return tracking.client().get_run(run_id).info.status


def test_tracking_uri_is_absolute(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    # set_tracking_uri outranks the environment, and earlier tests in the session set it
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri("sqlite:///rel.db")
    try:
        assert tracking.tracking_uri() == f"sqlite:///{tmp_path}/rel.db"
    finally:
        mlflow.set_tracking_uri(previous)


def test_run_lifecycle_failed_then_resumed(store):
    run_id = tracking.start_run("exp", "job-a")
    assert _status(run_id) == "RUNNING"
    tracking.end_run(run_id, "FAILED")
    assert _status(run_id) == "FAILED"
    assert tracking.start_run("exp", "job-a", run_id=run_id) == run_id
    assert _status(run_id) == "RUNNING"
    tracking.log_metrics(run_id, {"train_loss": 1.5}, step=3)
    tracking.end_run(run_id)
    history = tracking.client().get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(3, 1.5)]
    assert _status(run_id) == "FINISHED"


def test_params_redact_credentials_and_survive_resume(store):
    run_id = tracking.start_run("exp", "job-b")
    tracking.log_params(run_id, {"data": "s3://AKIA:SECRET@bucket/data", "iterations": 10})
    params = tracking.client().get_run(run_id).data.params
    assert params == {"data": "s3://bucket/data", "iterations": "10"}
    tracking.log_params(run_id, {"iterations": 20, "workers": 2})  # resumed with a change
    run = tracking.client().get_run(run_id)
    assert run.data.params["iterations"] == "10" and run.data.params["workers"] == "2"
    assert run.data.tags["resumed.iterations"] == "20"


def _checkpoint(tmp_path, name):
    path = str(tmp_path / name)
    checkpoint.save({"w": torch.ones(2)}, {"model": "fcn32s", "num_classes": 2}, path)
    return path


def test_champion_moves_only_when_better(store, tmp_path):
    versions = []
    for name, score in (("a", 0.5), ("b", 0.3), ("c", 0.7)):
        run_id = tracking.start_run("exp", name)
        path = _checkpoint(tmp_path, name)
        versions.append(tracking.register_checkpoint(run_id, path, "m", score))
        tracking.end_run(run_id)
    assert versions == [("1", True), ("2", False), ("3", True)]
    assert tracking.champion_mean_iu("m") == ("3", 0.7)
    # The same run registering again (a resumed, finished job) adds no version.
    again = tracking.register_checkpoint(run_id, _checkpoint(tmp_path, "c"), "m", 0.7)
    assert again == ("3", True)
    local = tracking.resolve_checkpoint("models:/m@champion", str(tmp_path / "dl"))
    state, config = checkpoint.load(local)
    assert torch.equal(state["w"], torch.ones(2)) and config["model"] == "fcn32s"
    source = tracking.client().get_model_version("m", "3").source
    assert source.endswith("/checkpoint")
