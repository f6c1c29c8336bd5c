"""How the labeling queue picks K images from a night's candidates (`--queue-strategy`):

random   a seeded uniform sample: the baseline every other strategy must beat. Each image's
         rank is a hash of (seed, uri), so the same night and seed give the same queue
         whatever the row order.
entropy  the highest mean pixel entropy first (ties by uri): the model's least certain images.
diverse  uncertainty, then diversity: among the 4K most uncertain images, greedy k-center
         (farthest-first) in the space of per-image features the model already computed:
         its predicted class shares (each class's fraction of the pixels) and its
         confidence statistics. An image closer
         than DUPLICATE_DISTANCE to one already queued is a near-duplicate and never queued
         (a burst of frames of one scene is labeled once).

Each function takes the candidates (fresh `ok` manifest rows with a score) and returns the
row indices queued, in queue order.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

STRATEGIES = ("random", "entropy", "diverse")
CANDIDATES_PER_SLOT = 4  # diverse: k-center over the 4K most uncertain (uncertainty first)
# Feature distance under which two images count as the same scene. The features live in
# [0, ~2]: class shares (plain fractions, not their square roots: a few speckle pixels of a
# class the frame does not hold would move a square root by more than this) plus three
# statistics in [0, 1]. 0.05 is e.g. 3.5 % of the pixels changing class: frames of one scene
# a camera's jitter apart differ by less, scenes with other objects by far more.
DUPLICATE_DISTANCE = 0.05


def by_entropy(rows: pa.Table, size: int) -> list[int]:
    scores = rows.column("mean_entropy").to_numpy(zero_copy_only=False)
    uris = rows.column("uri").to_pylist()
    return sorted(range(rows.num_rows), key=lambda i: (-scores[i], uris[i]))[:size]


def by_random(rows: pa.Table, size: int, seed: int) -> list[int]:
    uris = rows.column("uri").to_pylist()

    def draw(i: int) -> bytes:
        return hashlib.sha256(f"{seed}:{uris[i]}".encode()).digest()

    return sorted(range(rows.num_rows), key=draw)[:size]


def features(rows: pa.Table) -> np.ndarray:
    """N x F: the predicted class shares (when recorded), the mean entropy scaled to
    [0, 1] by log(C), the mean margin and the low-confidence fraction."""
    stats = [rows.column(n).to_numpy(zero_copy_only=False).astype(np.float64)
             for n in ("mean_entropy", "mean_margin", "low_confidence_fraction")]  # fmt: skip
    counts = rows.column("class_counts").to_pylist() if "class_counts" in rows.column_names else []
    shares = []
    if counts and all(c is not None for c in counts):
        matrix = np.asarray(counts, np.float64)
        shares = [matrix / np.maximum(matrix.sum(1, keepdims=True), 1)]
        stats[0] = stats[0] / np.log(max(2, matrix.shape[1]))
    columns = [np.nan_to_num(s)[:, None] for s in stats]
    return np.concatenate([*shares, *columns], axis=1)


def by_diversity(rows: pa.Table, size: int) -> list[int]:
    """Greedy k-center over the most uncertain candidates, near-duplicates left out."""
    pool = by_entropy(rows, CANDIDATES_PER_SLOT * size)
    if not pool or size <= 0:
        return []
    x = features(rows.take(pool))
    chosen = [0]  # the most uncertain image opens the queue
    nearest = np.linalg.norm(x - x[0], axis=1)
    while len(chosen) < size:
        far = int(np.argmax(nearest))
        if nearest[far] < DUPLICATE_DISTANCE:
            break  # all that is left duplicates the queue: a shorter queue, no duplicates
        chosen.append(far)
        nearest = np.minimum(nearest, np.linalg.norm(x - x[far], axis=1))
    return [pool[i] for i in chosen]


def choose(rows: pa.Table, size: int, strategy: str, seed: int = 0) -> list[int]:
    """Indices of `rows` to queue, in order, by `strategy` (STRATEGIES)."""
    if strategy == "entropy":
        return by_entropy(rows, size)
    if strategy == "random":
        return by_random(rows, size, seed)
    if strategy == "diverse":
        return by_diversity(rows, size)
    raise ValueError(f"--queue-strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
