"""A simulated world for measuring the labeling queue (benchmarks/active_learning.py,
tests/integration/test_cycle_job.py): a large unlabeled pool whose every image has a known
true mask, a small labeled seed set, a fixed validation set, and an oracle that answers a
queue with the true masks in the CVAT export layout, so labels travel the real
export -> ingest path.

What the pool holds is fixed here and in docs/active-learning.md, written before any strategy
was measured (KINDS, BURST_FRAMES, the class draw): common scenes, scenes with a rare class,
small objects, fog, low light, and bursts of near-identical frames of one hard scene (a
camera stuck on the same view). Scenes reuse the demo generator's class looks and
backgrounds (fcn.data.synthetic), which stays as it is.

Same seed -> the same world, byte for byte; an image depends only on (seed, its name).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from fcn import storage
from fcn.data.synthetic import background, class_look, encode_jpeg
from fcn.engine.classes import ClassList
from fcn.engine.images import encode_mask

CLASSES = ClassList(
    names=("background", "car", "person", "tree", "bicycle", "dog"),
    colors=((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (128, 0, 128)),
)
COMMON = (1, 2, 3)
RARE = (4, 5)
RARE_DRAW = 0.03  # each object of an ordinary scene is a given rare class with this chance
# The pool's make-up (shares of the pool's images), fixed before any strategy was measured.
KINDS = {
    "common": 0.40,  # 1-3 medium objects
    "rare": 0.10,  # a common scene plus one object of a rare class
    "small": 0.15,  # 2-4 objects of 6-15 % of the image side
    "fog": 0.10,  # a common scene under fog (blended 55-75 % toward light gray)
    "low_light": 0.10,  # a common scene at 20-35 % brightness, with sensor noise
    "burst": 0.15,  # bursts of BURST_FRAMES frames of one rare/small/fog/low-light scene
}
BURST_FRAMES = 8
BURST_SHIFT = 2  # pixels a burst frame moves at most (and its noise is drawn anew)
HARD = ("rare", "small", "fog", "low_light")  # what a burst's scene is, equally likely
SIZE = 64  # image side: a model that fits two CPU cores


def _rng(seed: int, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"world:{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _object(rng, size: int, scale: tuple[float, float]) -> np.ndarray:
    """A filled ellipse or polygon covering `scale` (fractions of the side)."""
    extent = rng.uniform(*scale) * size
    cx, cy = rng.uniform(0.1, 0.9, size=2) * size
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if rng.random() < 0.5:
        a, b = extent / 2 * rng.uniform(0.6, 1.0, size=2)
        draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=1)
    else:
        n = int(rng.integers(4, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = extent / 2 * rng.uniform(0.6, 1.0, size=n)
        points = [
            (cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(radii, angles, strict=True)
        ]
        draw.polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _class(rng) -> int:
    draw = rng.random()
    if draw < RARE_DRAW * len(RARE):
        return RARE[int(draw // RARE_DRAW)]
    return int(rng.choice(COMMON))


def _scene(rng, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float image H x W x 3, label) of one scene of `kind` (any but 'burst')."""
    image = background(rng, size, size)
    label = np.zeros((size, size), np.uint8)
    small = kind == "small"
    count = int(rng.integers(2, 5)) if small else int(rng.integers(1, 4))
    classes = [_class(rng) for _ in range(count)]
    if kind == "rare":
        classes[int(rng.integers(count))] = int(rng.choice(RARE))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for cls in classes:
        mask = _object(rng, size, (0.06, 0.15) if small else (0.25, 0.6))
        look = class_look(cls)
        u = xx * np.cos(look.stripe_angle) + yy * np.sin(look.stripe_angle)
        stripes = look.stripe_amplitude * np.sin(2 * np.pi * u / look.stripe_period)
        texture = np.asarray(look.color, np.float32) + rng.uniform(-12, 12) + stripes[..., None]
        image[mask] = texture[mask]
        label[mask] = cls
    if kind == "fog":
        alpha = rng.uniform(0.55, 0.75)
        image = (1 - alpha) * image + alpha * rng.uniform(190, 220)
    elif kind == "low_light":
        image = image * rng.uniform(0.2, 0.35)
    return image, label


def _finish(rng, image: np.ndarray, noise: float = 4.0) -> np.ndarray:
    return np.clip(image + rng.normal(0, noise, size=image.shape), 0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class Item:
    name: str  # file name without extension (unique in the world)
    kind: str  # a KINDS key ('burst' frames: the kind of their scene in `scene_kind`)
    scene: str  # the key its scene is drawn from: frames of one burst share it
    scene_kind: str
    frame: int = 0  # a burst frame's index (its shift and noise)

    @property
    def burst(self) -> str | None:
        return self.scene if self.kind == "burst" else None


@dataclass
class World:
    """The pool, the seed (train) and the validation items of one seed, and their truth."""

    seed: int
    size: int = SIZE
    pool: list[Item] = field(default_factory=list)
    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)

    def render(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 image, true label) of `item`."""
        image, label = _scene(_rng(self.seed, item.scene), item.scene_kind, self.size)
        noise = _rng(self.seed, f"{item.scene}/frame{item.frame}")
        if item.kind == "burst":
            dy, dx = noise.integers(-BURST_SHIFT, BURST_SHIFT + 1, size=2)
            image = np.roll(image, (dy, dx), axis=(0, 1))
            label = np.roll(label, (dy, dx), axis=(0, 1))
        return _finish(noise, image), label

    def by_name(self) -> dict[str, Item]:
        return {i.name: i for i in self.pool + self.train + self.val}

    def write_pool(self, uri: str) -> list[str]:
        """The pool as JPEGs `<uri>/<name>.jpg` (the segment job's input); their URIs."""
        uris = []
        for item in self.pool:
            image, _ = self.render(item)
            uris.append(storage.join(uri, f"{item.name}.jpg"))
            storage.write_bytes(uris[-1], encode_jpeg(image))
        return uris

    def write_labeled(self, uri: str) -> None:
        """The seed set and the validation set as a VOC tree (`train`, `val` lists) with its
        class file `classes.json`: what `ingest --voc <uri> --classes <uri>/classes.json`
        reads."""
        palette = CLASSES.palette()
        for split, items in (("train", self.train), ("val", self.val)):
            for item in items:
                image, label = self.render(item)
                jpeg = storage.join(uri, f"JPEGImages/{item.name}.jpg")
                storage.write_bytes(jpeg, encode_jpeg(image))
                storage.write_bytes(storage.join(uri, f"SegmentationClass/{item.name}.png"),
                                    encode_mask(label, palette))  # fmt: skip
            text = "".join(f"{i.name}\n" for i in items)
            storage.write_text(storage.join(uri, f"ImageSets/Segmentation/{split}.txt"), text)
        storage.write_text(storage.join(uri, "classes.json"), json.dumps(CLASSES.to_dict()))


def _kinds(rng, count: int, shares: dict[str, float]) -> list[str]:
    """`count` kinds in the exact proportions of `shares` (rounded), in random order."""
    names = list(shares)
    numbers = [int(round(count * shares[n])) for n in names]
    numbers[0] += count - sum(numbers)
    kinds = [n for n, k in zip(names, numbers, strict=True) for _ in range(k)]
    return [kinds[i] for i in rng.permutation(len(kinds))]


def make(seed: int, pool: int = 400, train: int = 20, val: int = 60, size: int = SIZE) -> World:
    """The world of `seed`: `pool` unlabeled images in KINDS' proportions (burst images come
    in whole bursts of BURST_FRAMES), `train` seed images and `val` validation images drawn
    from the same kinds without bursts (a burst is one scene)."""
    rng = _rng(seed, "plan")
    world = World(seed, size)
    kinds = _kinds(rng, pool, KINDS)
    bursts = kinds.count("burst") // BURST_FRAMES
    singles = [k for k in kinds if k != "burst"]
    singles += ["common"] * (pool - len(singles) - bursts * BURST_FRAMES)
    drawn = [(kind, f"pool{k}", kind, 0) for k, kind in enumerate(singles)]
    for b in range(bursts):
        scene_kind = HARD[int(rng.integers(len(HARD)))]
        drawn += [("burst", f"burst{b}", scene_kind, f) for f in range(BURST_FRAMES)]
    # Names in a random order of the drawn images: a burst is not a run of names.
    world.pool = [Item(f"p{n:05d}", *drawn[i]) for n, i in enumerate(rng.permutation(len(drawn)))]
    labeled = {k: v for k, v in KINDS.items() if k != "burst"}
    total = sum(labeled.values())
    labeled = {k: v / total for k, v in labeled.items()}
    world.train = [Item(f"t{k:05d}", kind, f"train{k}", kind)
                   for k, kind in enumerate(_kinds(rng, train, labeled))]  # fmt: skip
    world.val = [Item(f"v{k:05d}", kind, f"val{k}", kind)
                 for k, kind in enumerate(_kinds(rng, val, labeled))]  # fmt: skip
    return world


# --- the oracle -------------------------------------------------------------------------------


def name_of(export_id: str) -> str:
    """A world name from a CVAT export id (the image's key, folders joined by `__`)."""
    return export_id.rsplit("__", 1)[-1]


def answer(world: World, cvat_zip: bytes, uri: str) -> list[str]:
    """What a perfect labeler returns for the segment job's `cvat.zip`: the same task with every
    predicted mask replaced by the true one, exported as "Segmentation mask 1.1" (unzipped) to
    `uri`. Returns the world names it labeled."""
    items, palette = world.by_name(), CLASSES.palette()
    with zipfile.ZipFile(io.BytesIO(cvat_zip)) as archive:
        ids = archive.read("ImageSets/Segmentation/default.txt").decode().split()
        for export_id in ids:
            _, label = world.render(items[name_of(export_id)])
            image = archive.read(f"JPEGImages/{export_id}.jpg")
            storage.write_bytes(storage.join(uri, f"JPEGImages/{export_id}.jpg"), image)
            storage.write_bytes(storage.join(uri, f"SegmentationClass/{export_id}.png"),
                                encode_mask(label, palette))  # fmt: skip
        storage.write_bytes(storage.join(uri, "labelmap.txt"), archive.read("labelmap.txt"))
        storage.write_text(storage.join(uri, "ImageSets/Segmentation/default.txt"),
                           "".join(f"{i}\n" for i in ids))  # fmt: skip
    return [name_of(i) for i in ids]


def near_duplicate_share(world: World, names: list[str]) -> float:
    """The share of `names` that repeat a burst already in `names` (a burst's first frame is
    not a duplicate; every further frame of it is)."""
    items, seen, repeats = world.by_name(), set(), 0
    for name in names:
        burst = items[name].burst
        repeats += burst is not None and burst in seen
        seen.add(burst) if burst else None
    return repeats / len(names) if names else 0.0
