"""Any model URI the jobs accept -> a checked config or a loaded model.

A model is named by a checkpoint directory (local or object storage) or by MLflow
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...`). The engine loads checkpoint
directories only (it never imports MLflow); this module downloads an MLflow model into a
temporary folder, hands that folder to the engine, and removes it.
"""

from __future__ import annotations

import tempfile

from fcn.engine import checkpoint, inference
from fcn.tracking import resolve_checkpoint, tracking_uri


def check_model(uri: str) -> checkpoint.CheckpointConfig:
    """The checked config of the model at `uri` (what `load_model` would load), without
    building it: a job's driver calls this before Ray starts, so a wrong URI or a checkpoint
    that breaks the contract fails once with one line instead of in every worker.

    Raises FileNotFoundError (nothing at `uri`: no checkpoint, an unknown registered model,
    alias or run) or `checkpoint.ContractError`.
    """
    with tempfile.TemporaryDirectory(prefix="fcn-model-") as tmp:
        return checkpoint.check(_resolve(uri, tmp))


def load_model(uri: str, device="cpu") -> inference.LoadedModel:
    """`fcn.engine.inference.load_model` for any model URI (MLflow ones downloaded once)."""
    with tempfile.TemporaryDirectory(prefix="fcn-model-") as tmp:
        return inference.load_model(_resolve(uri, tmp), device)


def _resolve(uri: str, download_dir: str) -> str:
    """`resolve_checkpoint`, with MLflow's "not found" as one line naming `uri`."""
    if not uri.startswith(inference.MLFLOW_SCHEMES):
        return uri
    from mlflow.exceptions import MlflowException

    try:
        return resolve_checkpoint(uri, download_dir)
    except MlflowException as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{uri} does not resolve ({reason}) in the MLflow store at "
            f"{tracking_uri()}: check the model name and alias (models:/NAME@ALIAS) "
            "or the run id"
        ) from None
