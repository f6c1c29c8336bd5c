"""MLflow: run lifecycle, metric names, model registry, and models:/ URIs -> checkpoints.

Everything goes through `MlflowClient` with an explicit run id, never the fluent "active run":
the run is created by the job's driver, metrics are logged by the rank-0 training worker (a
different process, maybe on another node) and the run is ended by the driver, FAILED when the
job fails. The run id is saved beside the checkpoints, so a resubmitted job continues it.
"""

from __future__ import annotations

import os
import re
import tempfile

from fcn import checkpoint

CHAMPION = "champion"
# Tags that tie a run to its checkpoints and a model version to its score.
TAG_STORAGE = "fcn.storage"
TAG_MEAN_IU = "mean_iu"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")  # s3://KEY:SECRET@bucket -> s3://bucket

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(MLFLOW_SCHEMES)


def resolve_checkpoint(uri: str, download_dir: str | None = None) -> str:
    """A checkpoint directory URI for `uri`: MLflow URIs are downloaded, others pass through.

    The registered artifact is the checkpoint directory itself (state_dict + config.json, no
    pickled module), so what comes back loads with `fcn.checkpoint.load`.
    """
    if not is_mlflow_uri(uri):
        return uri
    import mlflow  # imported here: the segment and evaluate paths need it only for these URIs

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=download_dir or tempfile.mkdtemp(prefix="fcn-model-")
    )
    for root, _dirs, files in os.walk(local):
        if checkpoint.CONFIG_FILE in files and checkpoint.MODEL_FILE in files:
            return root
    raise FileNotFoundError(
        f"{uri!r} holds no checkpoint ({checkpoint.MODEL_FILE} + {checkpoint.CONFIG_FILE})"
    )


# --- run lifecycle ---------------------------------------------------------------------------


def client(tracking_uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def tracking_uri() -> str:
    """The tracking URI in force (MLFLOW_TRACKING_URI, else MLflow's local default), absolute.

    Handed to the training workers: their working directory differs from the driver's, so a
    relative `sqlite:///mlflow.db` would point them at another store.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + os.path.abspath(uri[len(prefix) :])
    if "://" not in uri:  # a bare path is a file store
        return os.path.abspath(uri)
    return uri


def redact(value):
    """Strip credentials embedded in URIs (`s3://KEY:SECRET@bucket`) before logging."""
    return _USERINFO.sub("", value) if isinstance(value, str) else value


def start_run(experiment: str, run_name: str, run_id: str | None = None, tags=None, uri=None):
    """Create a run, or mark run `run_id` RUNNING again (a resumed job); returns its id."""
    mlflow_client = client(uri)
    if run_id is not None:
        mlflow_client.get_run(run_id)  # a clear error when the store lost it
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    found = mlflow_client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlflow_client.create_experiment(experiment)
    run = mlflow_client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED", uri=None) -> None:
    """FINISHED, FAILED or KILLED: a failed job must never leave its run RUNNING."""
    client(uri).set_terminated(run_id, status=status)


def log_params(run_id: str, params: dict, uri=None) -> None:
    """Every setting as a param (credentials redacted). On a resumed run, params already
    logged keep their first value (MLflow params are immutable) and changes become tags."""
    from mlflow.entities import Param

    mlflow_client = client(uri)
    logged = mlflow_client.get_run(run_id).data.params
    fresh, changed = [], {}
    for key, value in params.items():
        text = str(redact(value))[:6000]
        if key not in logged:
            fresh.append(Param(key, text))
        elif logged[key] != text:
            changed[f"resumed.{key}"] = text
    if fresh:
        mlflow_client.log_batch(run_id, params=fresh)
    for key, value in changed.items():
        mlflow_client.set_tag(run_id, key, value)


def log_metrics(run_id: str, values: dict, step: int, uri=None) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in values.items()]
    client(uri).log_batch(run_id, metrics=batch)


def log_image(run_id: str, png: bytes, artifact_file: str, uri=None) -> None:
    """Log PNG bytes as an artifact (e.g. `val_images/<id>_iter100.png`)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(artifact_file))
        with open(path, "wb") as f:
            f.write(png)
        client(uri).log_artifact(run_id, path, os.path.dirname(artifact_file) or None)


# --- model registry --------------------------------------------------------------------------


def register_checkpoint(
    run_id: str, local_dir: str, model_name: str, mean_iu: float, uri=None
) -> tuple[str, bool]:
    """Log checkpoint dir `local_dir` as artifact `checkpoint/`, register it as a version of
    `model_name`, and move alias `champion` to it only when it beats the current champion.

    The version's source is `runs:/<run_id>/checkpoint`: a state_dict + config.json, no pickled
    module. A run registers at most one version (a resumed, finished job does not add another).
    Returns (version, became_champion).
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(uri)
    mlflow_client.log_artifacts(run_id, local_dir, "checkpoint")
    try:
        mlflow_client.get_registered_model(model_name)
    except MlflowException:
        mlflow_client.create_registered_model(model_name)
    existing = mlflow_client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        version = mlflow_client.create_model_version(
            model_name, source=f"runs:/{run_id}/checkpoint", run_id=run_id
        ).version
    mlflow_client.set_model_version_tag(model_name, version, TAG_MEAN_IU, f"{mean_iu:.6f}")
    champion = champion_mean_iu(model_name, uri)
    better = champion is None or mean_iu > champion[1]
    if better:
        mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
    return str(version), better or (champion is not None and champion[0] == str(version))


def champion_mean_iu(model_name: str, uri=None) -> tuple[str, float] | None:
    """(version, mean IU) of the current champion, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client(uri).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    score = version.tags.get(TAG_MEAN_IU)
    return str(version.version), float(score) if score is not None else float("-inf")
