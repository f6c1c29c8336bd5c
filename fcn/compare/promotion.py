"""--promote: the best finished run's version offered to the registry's champion rule."""

from __future__ import annotations

from dataclasses import dataclass

from fcn import tracking
from fcn.compare.rows import RunRow, best_score, order


class PromotionRefused(ValueError):
    """--promote found a best run whose version may not replace the champion."""


@dataclass
class Promotion:
    registered_model: str
    version: str
    run_id: str
    previous_version: str | None


def promote(rows: list[RunRow], registered_model: str | None = None, uri=None) -> Promotion:
    """Point `champion` at the best FINISHED run's registered model version, when the
    registry's champion rule allows it (`tracking.promote`; no higher mean IU asked: the
    table chose it).

    A running or failed run may show a higher best so far, but its model is not final.
    """
    finished = [r for r in rows if r.status == "FINISHED" and best_score(r) is not None]
    if not finished:
        raise LookupError("no finished run with a best_mean_iu to promote")
    best = min(finished, key=order)
    versions = tracking.run_versions(best.run_id, uri)
    if registered_model:
        versions = [v for v in versions if v.name == registered_model]
    names = sorted({v.name for v in versions})
    if not names:
        raise LookupError(
            f"best run {best.name} ({best.run_id}) has no registered model version"
            + (f" in {registered_model!r}" if registered_model else "")
        )
    if len(names) > 1:
        raise ValueError(
            f"best run {best.name} registered versions in several models ({', '.join(names)}); "
            "say which with --registered-model"
        )
    candidate = max(versions, key=lambda v: int(v.version))
    reason = f"best finished run {best.name} of its experiment (best mean IU {best_score(best)})"
    decision = tracking.promote(
        names[0], candidate.version, uri=uri, reason=reason, source_run=best.run_id
    )
    if decision.refusal:
        raise PromotionRefused(f"not promoting best run {best.name}: {decision.refusal}")
    return Promotion(names[0], decision.version, best.run_id, decision.previous)
