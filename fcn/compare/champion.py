"""--history and --rollback: a registered model's champion history as a table, and the
champion moved back through the registry (fcn.tracking.history holds the record)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fcn import tracking
from fcn.compare.promotion import PromotionRefused
from fcn.config import CompareConfig

COLUMNS = ("time (UTC)", "from", "to", "job", "reason", "from mean IU", "to mean IU",
           "val data", "forced")  # fmt: skip


@dataclass(frozen=True)
class ChampionHistory:
    model_name: str
    moves: list[tracking.ChampionMove]  # oldest first
    champion: str | None  # where the alias points now

    @property
    def unrecorded(self) -> bool:
        """The alias points elsewhere than the last recorded move (moved by hand)."""
        last = self.moves[-1].to_version if self.moves else None
        return self.champion != last


def history(config: CompareConfig) -> ChampionHistory:
    config.validate()
    uri, name = config.tracking_uri, config.registered_model
    moves = tracking.champion_history(name, uri)
    champion = tracking.champion_version(name, uri)
    return ChampionHistory(name, moves, None if champion is None else str(champion.version))


def rollback(config: CompareConfig) -> tracking.ChampionMove:
    """Move the champion back (`tracking.rollback`); returns the recorded move. A refusal of
    the champion rule (other validation data, no --force) is a PromotionRefused."""
    config.validate()
    uri, name = config.tracking_uri, config.registered_model
    decision = tracking.rollback(name, config.reason, config.to, config.force, uri)
    if decision.refusal:
        raise PromotionRefused(f"not rolling back (--force overrides): {decision.refusal}")
    return tracking.champion_history(name, uri)[-1]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _iu(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _val(move: tracking.ChampionMove) -> str:
    to, old = move.val_digest or "-", move.from_val_digest
    return to if old in (None, move.val_digest) or move.from_version is None else f"{old} -> {to}"


def to_markdown(found: ChampionHistory) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for m in found.moves:
        forced = "yes" if m.forced else ""
        cells = (_when(m.time), m.from_version or "-", m.to_version, m.job, m.reason,
                 _iu(m.from_mean_iu), _iu(m.to_mean_iu), _val(m), forced)  # fmt: skip
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if found.unrecorded:
        lines.append(
            f"\nThe alias points at version {found.champion or 'none'}, which no recorded move "
            "set: it was moved outside this project's registry code (by hand?)."
        )
    return "\n".join(lines) + "\n"
