"""Tiles on a trained model (issue 26): the demo's FCN-8s (jobs/demo.py, the session's one demo
run) segments mosaics of synthetic scenes larger than its minimum tile whole and as tiles;
the masks agree (the goal: >= 99.5 % of pixels; tiles whose origins sit on the 32-pixel grid
and whose kept parts stay a receptive field away from their borders give the same scores),
and the agreement inside the overlap bands, where a seam would show, is that of the interior."""

from __future__ import annotations

import numpy as np
import pytest

from fcn.data import synthetic
from fcn.engine import metrics, tiles
from fcn.engine.inference import load_model, predict

pytestmark = pytest.mark.integration

NUM_CLASSES = 4  # background and the demo's three object classes
CELL = 128  # the demo's scenes are 96-144 px: a mosaic of them stays in its training domain


def mosaic(seed: int, rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cells = [[synthetic.render_scene(rng, CELL, CELL)[0] for _ in range(cols)] for _ in range(rows)]
    return np.concatenate([np.concatenate(row, axis=1) for row in cells], axis=0)


def band(length: int, side: int, margin: int) -> np.ndarray:
    """True on the pixels of one axis within `margin` of a cut between two tiles' kept parts."""
    near = np.zeros(length, bool)
    for span in tiles.spans(length, side, margin)[1:]:
        near[max(0, span.keep - margin) : span.keep + margin] = True
    return near


def agreement_iu(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IU of mask `a` against mask `b` (classes present in either), in points."""
    iu = metrics.scores(metrics.confusion_matrix(b, a, NUM_CLASSES))["iu"]
    return 100 * float(np.nanmean(iu))


def test_tiled_masks_agree_with_whole_masks_on_the_demo_model(demo):
    loaded = load_model(str(demo[0] / "runs" / "demo" / "best"))
    model, spec = loaded.model, loaded.preprocessing
    side, margin = 1024, tiles.margin_of(model)  # the receptive field: 256 px for FCN-8s
    image = mosaic(0, 12, 16)  # 1536 x 2048: 2 x 3 tiles
    whole = predict(model, image[None], spec, tile="none")[0]
    tiled = predict(model, image[None], spec, tile=side)[0]
    assert len(np.unique(whole)) >= 3  # the trained model sees the scenes' objects
    assert (tiled == whole).mean() >= 0.995

    height, width = whole.shape
    seams = band(height, side, margin)[:, None] | band(width, side, margin)[None, :]
    assert 0.1 < seams.mean() < 0.9
    in_band = agreement_iu(tiled[seams], whole[seams])
    interior = agreement_iu(tiled[~seams], whole[~seams])
    assert abs(in_band - interior) <= 0.5, (in_band, interior)
