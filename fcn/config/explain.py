"""The explain job's settings (jobs/explain.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, required, setting


@dataclass(frozen=True)
class ExplainConfig(Settings):
    """Explain a mask the nightly segment job wrote: image, night, model, data, code, champion."""

    mask: str = required("the mask (s3://... or a local path) under a segment job's --output",
                         positional=True)  # fmt: skip
    json: bool = setting(False, "print one JSON object (for machines) instead of lines")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
