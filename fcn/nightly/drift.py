"""Did what the cameras see change? Tonight's predicted class distribution against references.

Two views of a night, both from the run manifest's per-image `class_counts`:
  pixel shares      each class's share of all predicted pixels (a distribution over classes)
  image frequencies the fraction of images in which each class appears at all (per class);
                    normalized, the distribution of class occurrences over classes

Distance: Jensen-Shannon distance (base 2, the square root of the JS divergence). It is bounded
in [0, 1], so one threshold means the same thing for every model and class list; symmetric, so
"tonight vs last week" reads like "last week vs tonight"; and defined when a class is empty on
one side (the mixture it compares against is not), where PSI and KL need an arbitrary epsilon
that then dominates the number. docs/insight.md has the reasoning and how to read it.

Per class: the JS distance between "this class" and "the rest" (two Bernoulli distributions),
so a single class that doubles its share stands out in the table even when the overall
distance is diluted by many stable classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fcn.data.distribution import Distribution, empty, normalize
from fcn.nightly import schema
from fcn.nightly.schema import Status


def of_manifest(table: pa.Table, num_classes: int) -> Distribution:
    """The distribution of a run manifest's `ok` rows that carry class counts."""
    rows = table.filter(
        pc.and_(schema.where(table, Status.OK), pc.is_valid(table.column("class_counts")))
    )
    if not rows.num_rows:
        return empty(num_classes)
    flat = rows.column("class_counts").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    counts = flat.reshape(rows.num_rows, -1)
    if counts.shape[1] != num_classes:  # a night of another model's class list: not comparable
        return empty(num_classes)
    return Distribution(counts.sum(0), (counts > 0).sum(0), rows.num_rows)


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) of two distributions: 0 equal, 1 disjoint support."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2
    divergence = (_kl(p, m) + _kl(q, m)) / 2
    return float(np.sqrt(max(divergence, 0.0)))  # rounding can give -1e-17


def _kl(p: np.ndarray, m: np.ndarray) -> float:
    """KL(p || m) in bits with 0 log 0 = 0 (m > 0 wherever p > 0: m is a mixture holding p)."""
    where = p > 0
    return float(np.sum(p[where] * np.log2(p[where] / m[where])))


def per_class(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per class c: JS distance of Bernoulli(p[c]) and Bernoulli(q[c]) ("c" vs "not c")."""
    return np.array([js_distance([a, 1 - a], [b, 1 - b]) for a, b in zip(p, q, strict=True)])


@dataclass(frozen=True)
class Comparison:
    """Tonight against one reference: overall and per-class distances of both views, and the
    reference's own shares (the report's table and chart show them beside tonight's)."""

    pixel: float
    pixel_per_class: list[float]
    reference_pixel_shares: list[float]
    # The image view needs images with class counts on both sides: None without them.
    image: float | None = None
    image_per_class: list[float] | None = None
    reference_image_frequencies: list[float] | None = None

    def to_dict(self) -> dict:
        """report.json's form: the image view's keys only when it exists."""
        out = {
            "pixel": self.pixel,
            "pixel_per_class": self.pixel_per_class,
            "reference_pixel_shares": self.reference_pixel_shares,
        }
        if self.image is not None:
            out["image"] = self.image
            out["image_per_class"] = self.image_per_class
            out["reference_image_frequencies"] = self.reference_image_frequencies
        return out


def compare(tonight: Distribution, reference: Distribution) -> Comparison | None:
    """Overall and per-class distances of both views; None when either side has no pixels."""
    p, q = tonight.pixel_shares(), reference.pixel_shares()
    if p is None or q is None:
        return None
    pixel = {"pixel": js_distance(p, q), "pixel_per_class": per_class(p, q).tolist()}
    f, g = tonight.image_frequencies(), reference.image_frequencies()
    occurrences = (normalize(tonight.image_counts), normalize(reference.image_counts))
    if f is None or g is None or any(o is None for o in occurrences):
        return Comparison(**pixel, reference_pixel_shares=q.tolist())
    return Comparison(
        **pixel,
        reference_pixel_shares=q.tolist(),
        image=js_distance(*occurrences),
        image_per_class=per_class(f, g).tolist(),
        reference_image_frequencies=g.tolist(),
    )
