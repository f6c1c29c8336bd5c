"""MLflow URIs of models: which URIs are MLflow's, pinning an alias to its version, resolving
a URI to its checkpoint directory, checking a model once in a job's driver, and recording a
version as a run's model input."""

from __future__ import annotations

import os
import re
import tempfile

from fcn.storage import MLFLOW_SCHEMES
from fcn.tracking.registry import TAG_MODEL_NAME, TAG_MODEL_VERSION, model_tags
from fcn.tracking.runs import client, tracking_uri


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(MLFLOW_SCHEMES)


def resolve_checkpoint(uri: str, download_dir: str | None = None) -> str:
    """A checkpoint directory URI for `uri`: MLflow URIs are downloaded, others pass through.

    A registered version is an MLflow pyfunc model whose artifact `checkpoint/` is the
    checkpoint directory (fcn.tracking.pyfunc), or, for versions registered before that, the bare
    checkpoint directory; both hold state_dict + config.json (no pickled module), found here
    by walking the download.
    """
    if not is_mlflow_uri(uri):
        return uri
    import mlflow

    from fcn.engine import checkpoint  # here: it imports torch, and only this function needs it

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=download_dir or tempfile.mkdtemp(prefix="fcn-model-")
    )
    for root, _dirs, files in sorted(os.walk(local)):
        if checkpoint.CONFIG_FILE in files and checkpoint.MODEL_FILE in files:
            return root
    raise FileNotFoundError(
        f"{uri!r} holds no checkpoint ({checkpoint.MODEL_FILE} + {checkpoint.CONFIG_FILE})"
    )


def pin_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """`models:/name@alias` -> `models:/name/<version>`: every actor loads the same version
    even if the alias moves mid-run, and a manifest names the exact version."""
    match = re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri)
    if not match:
        return uri
    version = client(tracking_uri).get_model_version_by_alias(match[1], match[2]).version
    return f"models:/{match[1]}/{version}"


def checked_model(uri: str):
    """(`uri` pinned (`pin_model_uri`), its checked CheckpointConfig): what a job's driver
    checks before Ray starts, so that a wrong model fails once with one line and every worker
    loads the same version even if the alias moves mid-run.

    Raises FileNotFoundError (no checkpoint there; an unknown registered model, alias or run,
    named with the store it was looked up in) or `checkpoint.ContractError`.
    """
    from fcn.engine import checkpoint  # here: it imports torch

    pinned = _one_line_errors(uri, pin_model_uri, uri)
    with tempfile.TemporaryDirectory(prefix="fcn-model-") as tmp:
        return pinned, checkpoint.check(resolve_model(pinned, tmp))


def resolve_model(uri: str, download_dir: str) -> str:
    """`resolve_checkpoint` for a job's settings: MLflow's "not found" is one line naming
    `uri` and the store (a FileNotFoundError), not a page of MLflow's REST error."""
    return _one_line_errors(uri, resolve_checkpoint, uri, download_dir)


def _one_line_errors(uri: str, call, *args):
    if not is_mlflow_uri(uri):
        return call(*args)
    from mlflow.exceptions import MlflowException

    try:
        return call(*args)
    except MlflowException as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{uri} does not resolve ({reason}) in the MLflow store at {tracking_uri()}: check "
            "the model name and alias (models:/NAME@ALIAS) or the run id"
        ) from None


def link_model_input(run_id: str, model_uri: str, uri=None) -> None:
    """Record a registry version's MLflow model as an input of run `run_id` (an evaluation):
    the UI lists the run under the model. Versions registered as a bare checkpoint
    directory have no MLflow model; their run keeps the `model_tags` alone."""
    from mlflow.entities import LoggedModelInput

    tags = model_tags(model_uri)
    if TAG_MODEL_VERSION not in tags:
        return
    mlflow_client = client(uri)
    version = mlflow_client.get_model_version(tags[TAG_MODEL_NAME], tags[TAG_MODEL_VERSION])
    # Stores do not all keep a version's model_id; its source `models:/<model id>` names it.
    source = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
    model_id = version.model_id or (source[1] if source else None)
    if model_id:
        mlflow_client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
