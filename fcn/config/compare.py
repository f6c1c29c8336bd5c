"""The compare job's settings (jobs/compare.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, required, setting


@dataclass(frozen=True)
class CompareConfig(Settings):
    """Compare an experiment's training runs: table by best mean IU, curves, champion alias."""

    experiment: str = required("MLflow experiment whose runs are compared")
    output: str = setting("./results/compare", "where the CSV, Markdown and PNGs go (URI)")
    # Five curves stay readable on one plot; the table always lists every run.
    top: int = setting(5, "how many of the best runs get curves and per-class bars")
    promote: bool = setting(
        False,
        "move the 'champion' alias to the best finished run's model, when it was validated on "
        "the champion's validation data",
    )
    registered_model: str | None = setting(
        None, "registered model to promote in (needed only if the run registered several)"
    )
    log_artifacts: bool = setting(False, "also log the outputs as a comparison run's artifacts")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
