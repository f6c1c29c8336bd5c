"""The compare job's settings (jobs/compare.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, setting


@dataclass(frozen=True)
class CompareConfig(Settings):
    """Compare an experiment's training runs (table by best mean IU, curves, champion alias),
    or show a registered model's champion history, or roll its champion back."""

    experiment: str | None = setting(
        None, "MLflow experiment whose runs are compared (needed unless --history/--rollback)"
    )
    output: str = setting("./results/compare", "where the CSV, Markdown and PNGs go (URI)")
    # Five curves stay readable on one plot; the table always lists every run.
    top: int = setting(5, "how many of the best runs get curves and per-class bars")
    promote: bool = setting(
        False,
        "move the 'champion' alias to the best finished run's model, when it was validated on "
        "the champion's validation data",
    )
    registered_model: str | None = setting(
        None, "registered model to promote in (needed only if the run registered several); "
        "the one --history and --rollback act on",
    )  # fmt: skip
    log_artifacts: bool = setting(False, "also log the outputs as a comparison run's artifacts")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    history: bool = setting(
        False, "print every move of --registered-model's champion alias (time, from, to, "
        "reason, mean IUs, val data, job), oldest first, and nothing else", group="champion",
    )  # fmt: skip
    rollback: bool = setting(
        False, "move --registered-model's champion back (to the previous champion in the "
        "history, or --to) and record it; needs --reason", group="champion",
    )  # fmt: skip
    to: str | None = setting(None, "--rollback: the version to roll back to", group="champion")
    reason: str | None = setting(
        None, "--rollback: why, recorded in the champion history", group="champion"
    )
    force: bool = setting(
        False, "--rollback: also to a version validated on other data than the champion "
        "(recorded as forced)", group="champion",
    )  # fmt: skip

    def validate(self) -> CompareConfig:
        if self.top < 1:
            raise ValueError(f"--top must be at least 1, got {self.top}")
        if self.history and self.rollback:
            raise ValueError("--history and --rollback are separate commands: give one")
        if (self.history or self.rollback) and not self.registered_model:
            raise ValueError("--history and --rollback need --registered-model NAME")
        if (self.history or self.rollback) and self.promote:
            raise ValueError("--promote compares runs: leave it out of --history/--rollback")
        if self.rollback and not (self.reason or "").strip():
            raise ValueError("--rollback needs --reason TEXT (it goes into the history)")
        if not self.rollback and (self.to or self.reason or self.force):
            raise ValueError("--to, --reason and --force go with --rollback only")
        if not (self.history or self.rollback or self.experiment):
            raise ValueError("--experiment is required (or --history / --rollback)")
        return self
