"""`--queue-strategy`: random is a seeded, reproducible sample; entropy falls for bursts of
near-duplicate frames; diverse queues at most one frame of a burst (fcn.nightly.selection)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fcn.config import SegmentConfig
from fcn.nightly import manifest, queue, selection

NONE = pa.array([], pa.string())


def pool(seed: int = 0, bursts: int = 6, burst_size: int = 8, singles: int = 40) -> pa.Table:
    """A night: `bursts` bursts of near-identical frames (one scene, a few pixels apart), the
    most uncertain images of the night, and `singles` distinct scenes."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(bursts):
        counts = rng.integers(0, 4000, size=5) * (rng.random(5) < 0.6)
        entropy, margin = rng.uniform(1.2, 1.5), rng.uniform(0.1, 0.3)
        for f in range(burst_size):
            jitter = rng.integers(-5, 6, size=5)  # a few pixels change class at the edges
            rows.append(
                _row(
                    f"burst{b}_{f}",
                    np.maximum(counts + jitter, 0),
                    entropy + rng.normal(0, 1e-3),
                    margin,
                )
            )
    for s in range(singles):
        counts = rng.integers(0, 4000, size=5) * (rng.random(5) < 0.6)
        rows.append(_row(f"single{s}", counts, rng.uniform(0.2, 1.1), rng.uniform(0.2, 0.9)))
    return manifest.to_table(rows)


def _row(name, counts, entropy, margin) -> dict:
    return {
        "uri": f"s3://b/{name}.jpg", "mask_uri": f"s3://b/m/{name}.png", "status": "ok",
        "class_counts": [int(c) for c in counts], "mean_entropy": float(entropy),
        "mean_margin": float(margin), "low_confidence_fraction": float(1 - margin),
    }  # fmt: skip


def bursts_in(chosen: pa.Table) -> list[str]:
    return [
        u.split("/")[-1].split("_")[0] for u in chosen.column("uri").to_pylist() if "burst" in u
    ]


def test_entropy_alone_queues_whole_bursts_of_near_duplicates():
    chosen = queue.select(pool(), NONE, 12, "r", "entropy")
    found = bursts_in(chosen)
    assert len(found) == 12 and len(set(found)) < 12  # the trap the diverse strategy avoids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_diverse_queues_no_near_duplicates_from_a_pool_seeded_with_bursts(seed):
    table = pool(seed)
    chosen = queue.select(table, NONE, 20, "r", "diverse")
    found = bursts_in(chosen)
    assert len(found) == len(set(found)), f"two frames of one burst queued: {found}"
    assert "burst" in chosen.column("uri")[0].as_py()  # the most uncertain image opens it
    assert chosen.num_rows == 20
    assert chosen.column("rank").to_pylist() == list(range(1, 21))


def test_diverse_stops_short_rather_than_queue_a_duplicate():
    one_burst = pool(bursts=1, burst_size=10, singles=0)
    chosen = queue.select(one_burst, NONE, 5, "r", "diverse")
    assert chosen.num_rows == 1


def test_random_is_seeded_reproducible_and_independent_of_row_order():
    table = pool()
    first = queue.select(table, NONE, 10, "r", "random", seed=7).column("uri").to_pylist()
    order = np.random.default_rng(3).permutation(table.num_rows)
    shuffled = table.take(pa.array(order))
    again = queue.select(shuffled, NONE, 10, "r", "random", seed=7).column("uri").to_pylist()
    other = queue.select(table, NONE, 10, "r", "random", seed=8).column("uri").to_pylist()
    assert first == again
    assert first != other
    entropy = queue.select(table, NONE, 10, "r", "entropy").column("uri").to_pylist()
    assert first != entropy


def test_every_strategy_skips_queued_and_keeps_the_entropy_as_the_score():
    table = pool()
    already = pa.array(["s3://b/burst0_0.jpg", "s3://b/single3.jpg"])
    for strategy in selection.STRATEGIES:
        chosen = queue.select(table, already, 30, "r", strategy)
        assert not set(chosen.column("uri").to_pylist()) & set(already.to_pylist())
        assert chosen.column_names == queue.COLUMNS


def test_an_unknown_strategy_is_refused_and_the_setting_has_the_three():
    with pytest.raises(ValueError, match="--queue-strategy"):
        selection.choose(pool(), 3, "smart")
    assert SegmentConfig.__dataclass_fields__["queue_strategy"].metadata["choices"] == (
        selection.STRATEGIES
    )
