"""MLflow: run lifecycle, metric names, model registry, and models:/ URIs -> checkpoints."""

from __future__ import annotations

import os
import tempfile

from fcn import checkpoint

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
