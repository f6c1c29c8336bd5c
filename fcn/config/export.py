"""The export job's settings (jobs/export.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, required, setting

# The sizes the parity check runs at unless told otherwise: the hostile ones (a pixel,
# odd sizes, portrait and landscape VOC, a one-pixel-high strip).
PARITY_SIZES = ("1x1", "31x47", "500x375", "375x500", "1x1000")


@dataclass(frozen=True)
class ExportConfig(Settings):
    """Export a checkpoint or registered model as ONNX (dynamic height and width)."""

    model: str = required("checkpoint directory URI, or an MLflow models:/ or runs:/ URI")
    output: str = required("directory (local or any URI) the ONNX file goes to: model.onnx")
    check_sizes: tuple[str, ...] = setting(
        PARITY_SIZES, "HxW sizes at which ONNX Runtime's masks and scores must match "
        "PyTorch's before the file is written",
    )  # fmt: skip
    check: bool = setting(True, "run that parity check (--no-check: write unchecked)")
    register: bool = setting(
        False, "also attach the ONNX model to the registered version --model names (an "
        "mlflow.onnx model in the version's run, named by the version's tags onnx_model, "
        "onnx_sha256); needs a models:/ URI",
    )  # fmt: skip

    def sizes(self) -> list[tuple[int, int]]:
        """check_sizes as (height, width) pairs; ValueError naming the flag."""
        parsed = []
        for text in self.check_sizes:
            parts = text.lower().split("x")
            if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
                raise ValueError(f"--check-sizes: {text!r} is not HxW with H, W >= 1 (e.g. 31x47)")
            parsed.append((int(parts[0]), int(parts[1])))
        return parsed

    def validate(self) -> ExportConfig:
        self.sizes()
        if self.register and not self.model.startswith("models:/"):
            raise ValueError(
                f"--register attaches the ONNX model to a registered version: --model must be "
                f"a models:/NAME/VERSION or models:/NAME@ALIAS URI, not {self.model!r}"
            )
        return self
