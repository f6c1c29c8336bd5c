"""The export job (jobs/export.py): any model URI -> a checked ONNX file, and with `register`
that file attached to the registered version (fcn.tracking.registry.attach_onnx).

The model is resolved as evaluate and segment resolve it (`checked_model`: an alias pinned to
its version, the checkpoint's contract checked once), exported by `fcn.engine.onnx_export`,
and run on ONNX Runtime against the PyTorch net at `config.check_sizes` before anything is
written: a file that gives other masks than the checkpoint is never written or registered.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

from fcn import storage
from fcn.config import ExportConfig
from fcn.engine import onnx_export, onnx_runtime
from fcn.engine.checkpoint import CheckpointConfig
from fcn.tracking import registry
from fcn.tracking.models import load_model
from fcn.tracking.uris import checked_model

ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ExportResult:
    model_uri: str  # the model exported (an alias pinned to its version)
    config: CheckpointConfig
    parity: list  # [onnx_runtime.SizeParity], empty without the check
    onnx_uri: str | None  # where model.onnx was written; None when the check failed
    sha256: str
    size_bytes: int
    registered: str | None = None  # the ONNX model's models:/ URI, with --register

    @property
    def parity_ok(self) -> bool:
        return all(p.ok for p in self.parity)


def validate(config: ExportConfig) -> tuple[str, CheckpointConfig]:
    """(pinned model URI, its checked config); one-line ValueError / FileNotFoundError."""
    config.validate()
    pinned, checked = checked_model(config.model)
    if config.register and not registry.REGISTRY_VERSION.fullmatch(pinned):
        raise ValueError(f"--register: {config.model!r} is not a registered version")
    return pinned, checked


def run(config: ExportConfig, pinned: str) -> ExportResult:
    """Export the model at `pinned` (what `validate` returned), check it, write it to
    `config.output`/model.onnx and, with `config.register`, attach it to its version."""
    loaded = load_model(pinned, "cpu")
    proto = onnx_export.export(loaded.model, loaded.config)
    data = proto.SerializeToString()
    sha256 = hashlib.sha256(data).hexdigest()
    report = []
    if config.check:
        report = onnx_runtime.parity(loaded.model, onnx_runtime.OnnxModel(data), config.sizes())
    result = ExportResult(pinned, loaded.config, report, None, sha256, len(data))
    if not result.parity_ok:
        return result
    target = storage.join(config.output, ONNX_FILE)
    storage.makedirs(config.output)
    storage.write_bytes(target, data)
    registered = None
    if config.register:
        match = registry.REGISTRY_VERSION.fullmatch(pinned)
        with tempfile.TemporaryDirectory(prefix="fcn-onnx-") as tmp:
            local = os.path.join(tmp, ONNX_FILE)
            with open(local, "wb") as f:
                f.write(data)
            registered = registry.attach_onnx(match[1], match[2], local, sha256)
    return ExportResult(pinned, loaded.config, report, target, sha256, len(data), registered)
