"""The drift report's picture: class shares tonight vs the references, and the distance over
the past nights with the alert threshold. Agg backend: no display on a cluster node."""

from __future__ import annotations

import numpy as np

from fcn.engine.visualize import figure_png


def drift_chart(report) -> bytes:
    """PNG bytes of `report` (a fcn.nightly.insight.DriftReport)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report.classes
    fig, (shares, history) = plt.subplots(
        1, 2, figsize=(max(8, 0.45 * len(names) + 6), 4), gridspec_kw={"width_ratios": [2, 1]}
    )
    x = np.arange(len(names))
    tonight = report.tonight.pixel_shares()
    bars = [("tonight", None if tonight is None else tonight.tolist())]
    for name, ref in report.references.items():
        if ref.comparison and ref.comparison.reference_pixel_shares:
            bars.append((name, ref.comparison.reference_pixel_shares))
    width = 0.8 / len(bars)
    for i, (label, values) in enumerate(bars):
        if values:
            shares.bar(x + (i - (len(bars) - 1) / 2) * width, values, width, label=label)
    shares.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    shares.set_ylabel("share of predicted pixels")
    shares.set_title(f"night {report.run_id}: {report.images} images")
    shares.legend(fontsize=8)

    points = [(h["run_id"], h["distance"]) for h in report.history if h["distance"] is not None]
    if points:
        history.plot(range(len(points)), [d for _, d in points], marker="o")
        history.set_xticks(range(len(points)), [r[:8] for r, _ in points], rotation=60, fontsize=7)
    if report.threshold is not None:
        history.axhline(report.threshold, color="red", linestyle="--", label="threshold")
        history.legend(fontsize=8)
    history.set_ylim(0, 1)
    history.set_ylabel("Jensen-Shannon distance")
    history.set_title("drift over the past nights")
    fig.tight_layout()
    return figure_png(fig)
