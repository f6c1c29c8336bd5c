"""The simulated world of the labeling benchmark (fcn.data.world): its make-up is the one
written down, it is deterministic, bursts are near-identical frames, and the oracle answers
the segment job's CVAT export with the true masks in the same layout."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from fcn.data import world as simulated
from fcn.engine.images import decode_mask
from fcn.nightly import cvat


def test_the_pool_has_the_written_proportions_and_whole_bursts():
    world = simulated.make(seed=1, pool=160, train=10, val=20)
    kinds = Counter(i.kind for i in world.pool)
    assert len(world.pool) == 160
    for kind, share in simulated.KINDS.items():
        assert abs(kinds[kind] - share * 160) <= simulated.BURST_FRAMES, kind
    bursts = Counter(i.burst for i in world.pool if i.burst)
    assert set(bursts.values()) == {simulated.BURST_FRAMES}
    assert not any(i.burst for i in world.train + world.val)
    assert len({i.name for i in world.pool + world.train + world.val}) == 190


def test_the_same_seed_is_the_same_world_and_burst_frames_are_near_duplicates():
    a, b = simulated.make(seed=3, pool=80), simulated.make(seed=3, pool=80)
    assert a.pool == b.pool
    item = a.pool[5]
    assert np.array_equal(a.render(item)[0], b.render(item)[0])
    frames = [i for i in a.pool if i.burst == "burst0"]
    (i0, l0), (i1, l1) = a.render(frames[0]), a.render(frames[1])
    assert (l0 == l1).mean() > 0.85  # the same scene a few pixels apart
    assert not np.array_equal(i0, i1)
    other = next(i for i in a.pool if i.kind == "common")
    assert (a.render(other)[1] == l0).mean() < (l0 == l1).mean()


def test_rare_classes_are_rare_fog_is_pale_and_low_light_dark():
    world = simulated.make(seed=0, pool=200)
    present = Counter()
    for item in world.pool:
        present.update(set(np.unique(world.render(item)[1]).tolist()))
    assert all(present[c] < present[1] for c in simulated.RARE)
    for item in world.pool:
        mean = world.render(item)[0].mean()
        assert mean > 140 if item.kind == "fog" else mean < 60 if item.kind == "low_light" else True


def test_the_oracle_answers_a_cvat_export_with_the_true_masks(tmp_path):
    world = simulated.make(seed=2, pool=40)
    uris = world.write_pool(str(tmp_path / "pool"))
    rows = [{"uri": u, "mask_uri": f"m{k}"} for k, u in enumerate(uris[:3])]
    predicted = {f"m{k}": b"not the truth" for k in range(3)}
    images = {u: Path(u).read_bytes() for u in uris[:3]}
    zipped = cvat.export(rows, simulated.CLASSES, images, predicted)
    names = simulated.answer(world, zipped, str(tmp_path / "labeled"))
    assert names == [u.rsplit("/", 1)[-1][:-4] for u in uris[:3]]
    root = tmp_path / "labeled"
    ids = (root / "ImageSets/Segmentation/default.txt").read_text().split()
    assert [simulated.name_of(i) for i in ids] == names
    truth = world.render(world.by_name()[names[0]])[1]
    mask = decode_mask((root / f"SegmentationClass/{ids[0]}.png").read_bytes())
    assert np.array_equal(mask, truth)
    assert Image.open(io.BytesIO((root / f"JPEGImages/{ids[0]}.jpg").read_bytes())).size == (64, 64)
    assert (root / "labelmap.txt").read_text().startswith("# label")


def test_near_duplicate_share_counts_repeats_of_a_burst():
    world = simulated.make(seed=0, pool=80)
    burst = [i.name for i in world.pool if i.burst == "burst0"]
    single = [i.name for i in world.pool if not i.burst][:2]
    assert simulated.near_duplicate_share(world, burst[:3] + single) == 2 / 5
    assert simulated.near_duplicate_share(world, single) == 0.0
