"""Any model URI the jobs accept -> a checked config or a loaded model.

A model is named by a checkpoint directory (local or object storage) or by MLflow
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...`). The engine loads checkpoint
directories only (it never imports MLflow); these functions download an MLflow model into a
temporary folder, hand that folder to the engine, and remove it. (Not re-exported by
fcn.tracking: importing them imports torch.)
"""

from __future__ import annotations

import tempfile

from fcn.engine import checkpoint, inference
from fcn.tracking.uris import resolve_model


def check_model(uri: str) -> checkpoint.CheckpointConfig:
    """The checked config of the model at `uri` (what `load_model` would load), without
    building it. Raises FileNotFoundError (nothing at `uri`: no checkpoint, an unknown
    registered model, alias or run) or `checkpoint.ContractError`, each one line."""
    with tempfile.TemporaryDirectory(prefix="fcn-model-") as tmp:
        return checkpoint.check(resolve_model(uri, tmp))


def load_model(uri: str, device="cpu") -> inference.LoadedModel:
    """`fcn.engine.inference.load_model` for any model URI (an MLflow one downloaded once)."""
    with tempfile.TemporaryDirectory(prefix="fcn-model-") as tmp:
        return inference.load_model(resolve_model(uri, tmp), device)
