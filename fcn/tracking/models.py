"""Any model URI the jobs accept -> a loaded model (`uris.checked_model` checks one).

A model is named by a checkpoint directory (local or object storage) or by MLflow
(`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...`). The engine loads checkpoint
directories only (it never imports MLflow); these functions download an MLflow model into a
temporary folder, hand that folder to the engine, and remove it. (Not re-exported by
fcn.tracking: importing them imports torch.)
"""

from __future__ import annotations

import tempfile

from fcn.engine import inference
from fcn.tracking.uris import resolve_model


def load_model(uri: str, device="cpu") -> inference.LoadedModel:
    """`fcn.engine.inference.load_model` for any model URI (an MLflow one downloaded once)."""
    with tempfile.TemporaryDirectory(prefix="fcn-model-") as tmp:
        return inference.load_model(resolve_model(uri, tmp), device)
