"""Deterministic synthetic datasets in the real VOC2012 / SBD / image-tree layouts.

Every reader is tested on the same on-disk formats it meets in production: JPEGs, VOC
palette PNGs with void borders, SBD MATLAB files (`GTcls.Segmentation`) and a nested tree
of mixed-extension images. Same seed -> byte-identical files.

A set may use its own class list (`class_list`, e.g. `custom_classes()`): its masks are
palette PNGs in that list's colors and `<root>/classes.json` beside the data is the class
file `ingest --classes` reads. `add_sideways_image` plants a JPEG stored sideways with an
EXIF orientation and its mask drawn on the image as displayed.

Images are learnable on purpose: each class has a fixed color and stripe texture that does
not depend on the seed (train on one seed, evaluate on another), objects sit on low-saturation
textured backgrounds, so a small FCN reaches a high mean IU in few iterations.

Long module: on purpose, one generator whose pieces (scenes, encoders, the three layouts, the
CLI the demo runs) are used together; tests build their hostile inputs on top of it
(tests/fixtures/), outside the product.

CLI:
    python -m fcn.data.synthetic --voc DIR --sbd DIR --unlabeled DIR --num-images N --seed S
        [--classes 1,2,3] [--class-list FILE]
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image, ImageDraw

from fcn.engine.classes import VOC_CLASSES, VOID, ClassList, parse_class_list, voc_classes
from fcn.engine.images import encode_mask

OBJECT_CLASSES = tuple(range(1, len(VOC_CLASSES)))  # 1..20; 0 is background
CLASS_FILE = "classes.json"  # written beside a set with its own class list
JPEG_QUALITY = 90  # close to the VOC JPEGs' quality; visible but mild artifacts
# Unlabeled tree: nested folders and mixed extensions, as user buckets look.
_UNLABELED_DIRS = ("", "street", "street/2021", "park/summer/day", "misc")
_UNLABELED_EXTS = (".jpg", ".png", ".JPG", ".jpeg", ".PNG")


@dataclass(frozen=True)
class ClassLook:
    """What makes a class recognizable: base color and a stripe texture."""

    color: tuple[float, float, float]
    stripe_angle: float  # radians
    stripe_period: float  # pixels
    stripe_amplitude: float


def class_look(cls: int) -> ClassLook:
    """Fixed per class (independent of the seed) so every synthetic set shares statistics."""
    k = cls - 1
    hue = (k * 7 % 20) / 20.0  # 20 hues, neighbors in index order far apart in hue
    sat, val = (0.9, 0.95) if k % 2 == 0 else (0.75, 0.6)
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return ClassLook(
        color=(255 * r, 255 * g, 255 * b),
        stripe_angle=np.pi * (k % 5) / 5,
        stripe_period=4.0 + 2.0 * (k % 4),
        stripe_amplitude=18.0,
    )


def rng_for(seed: int, key: str) -> np.random.Generator:
    # One generator per (seed, image id): an image does not depend on which other images
    # are generated, so VOC and SBD render the same picture for a shared id.
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gray = rng.uniform(80, 180)
    tint = rng.uniform(-12, 12, size=3)
    image = np.empty((height, width, 3), np.float32)
    image[:] = gray + tint
    for _ in range(2):  # soft low-frequency blobs, like lighting and clutter
        fy, fx = rng.uniform(0.5, 3.0, size=2) * 2 * np.pi / np.array([height, width])
        phase = rng.uniform(0, 2 * np.pi)
        image += rng.uniform(8, 20) * np.sin(fy * yy + fx * xx + phase)[..., None]
    image += rng.normal(0, 8, size=image.shape)
    return image


def _shape_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    size = rng.uniform(0.25, 0.6) * min(height, width)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    kind = rng.integers(3)
    if kind == 0:  # ellipse
        a, b = size / 2 * rng.uniform(0.6, 1.0, size=2)
        draw.ellipse([cx - a, cy - b, cx + a, cy + b], fill=1)
    elif kind == 1:  # rotated rectangle
        a, b = size / 2 * rng.uniform(0.5, 1.0, size=2)
        t = rng.uniform(0, np.pi)
        corners = [(-a, -b), (a, -b), (a, b), (-a, b)]
        pts = [
            (cx + x * np.cos(t) - y * np.sin(t), cy + x * np.sin(t) + y * np.cos(t))
            for x, y in corners
        ]
        draw.polygon(pts, fill=1)
    else:  # irregular star-like polygon
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = size / 2 * rng.uniform(0.5, 1.0, size=n)
        pts = [(cx + r * np.cos(t), cy + r * np.sin(t)) for r, t in zip(radii, angles, strict=True)]
        draw.polygon(pts, fill=1)
    return np.asarray(canvas, dtype=bool)


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    classes: tuple[int, ...] = OBJECT_CLASSES,
    max_objects: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """One image (H x W x 3 uint8) and its labels (H x W uint8, 0 = background, no void)."""
    image = background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.choice(classes))
        mask = _shape_mask(rng, height, width)
        look = class_look(cls)
        u = xx * np.cos(look.stripe_angle) + yy * np.sin(look.stripe_angle)
        stripes = look.stripe_amplitude * np.sin(2 * np.pi * u / look.stripe_period)
        color = np.asarray(look.color, np.float32) + rng.uniform(-12, 12)  # lighting
        texture = color + stripes[..., None] + rng.normal(0, 6, size=image.shape)
        image[mask] = texture[mask]
        label[mask] = cls  # later objects occlude earlier ones
    return np.clip(image, 0, 255).round().astype(np.uint8), label


def void_border(label: np.ndarray, radius: int) -> np.ndarray:
    """VOC-style labels: 255 on a band of `radius` px around every outline between labels."""
    h, w = label.shape
    padded = np.pad(label, radius, mode="edge")
    lo = label.copy()
    hi = label.copy()
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            window = padded[dy : dy + h, dx : dx + w]
            np.minimum(lo, window, out=lo)
            np.maximum(hi, window, out=hi)
    out = label.copy()
    out[lo != hi] = VOID
    return out


def _border_radius(height: int, width: int) -> int:
    return max(1, round(min(height, width) / 120))  # ~2-4 px at VOC sizes, like the devkit


def encode_jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def sideways_jpeg(image: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG that displays as `image` (H x W x 3 uint8) but stores it sideways (W x H) with
    EXIF `orientation` 6 or 8, as phone cameras write portrait photos."""
    # The stored pixels are the displayed ones turned back: the viewer turns them again.
    undo = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}
    if orientation not in undo:
        raise ValueError(f"orientation must be 6 or 8 (sideways), got {orientation}")
    exif = Image.Exif()
    exif[0x0112] = orientation  # EXIF Orientation
    buf = io.BytesIO()
    stored = Image.fromarray(image).transpose(undo[orientation])
    stored.save(buf, "JPEG", quality=JPEG_QUALITY, exif=exif)
    return buf.getvalue()


def encode_sbd_mat(label: np.ndarray, num_classes: int = len(VOC_CLASSES)) -> bytes:
    """An SBD `cls/*.mat`: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    boundaries = np.empty((num_classes - 1, 1), dtype=object)  # one per object class
    edge = void_border(label, 1) == VOID
    for cls in range(1, num_classes):
        boundaries[cls - 1, 0] = scipy.sparse.csc_matrix(edge & (label == cls))
    present = np.array([c for c in np.unique(label) if c != 0], dtype=np.uint8)
    gt = {"Segmentation": label, "Boundaries": boundaries, "CategoriesPresent": present}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"GTcls": gt}, do_compression=True)
    data = bytearray(buf.getvalue())
    # The 116-byte MAT header text carries a creation timestamp; a fixed text keeps the
    # files byte-identical across runs (the header text is free-form in the format).
    data[:116] = b"MATLAB 5.0 MAT-file, synthetic SBD (fcn.data.synthetic)".ljust(116)
    return bytes(data)


def _ids(rng: np.random.Generator, count: int) -> list[str]:
    """VOC-style ids `YYYY_NNNNNN`, unique and sorted like the real lists."""
    ids: set[str] = set()
    while len(ids) < count:
        ids.add(f"{int(rng.integers(2007, 2013))}_{int(rng.integers(0, 10000)):06d}")
    return sorted(ids)


def _size(rng: np.random.Generator, min_size: int, max_size: int) -> tuple[int, int]:
    h, w = rng.integers(min_size, max_size + 1, size=2)
    return int(h), int(w)


@dataclass
class SyntheticSet:
    """What was generated: ids per split for each source, the unlabeled keys, the classes."""

    voc: dict[str, list[str]] = field(default_factory=dict)
    sbd: dict[str, list[str]] = field(default_factory=dict)
    unlabeled: list[str] = field(default_factory=list)
    classes: ClassList = field(default_factory=voc_classes)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_list(path: Path, ids: list[str]) -> None:
    _write(path, "".join(f"{i}\n" for i in ids).encode())


def custom_classes() -> ClassList:
    """A 5-class list with its own names and colors (none of them VOC's): a set generated with
    it shows that a class list travels from the data to the masks a model writes."""
    return ClassList(
        names=("background", "apple", "brick", "leaf", "sky"),
        colors=((10, 10, 10), (230, 25, 75), (245, 130, 48), (60, 180, 75), (0, 130, 200)),
    )


def generate(
    voc: str | Path | None = None,
    sbd: str | Path | None = None,
    unlabeled: str | Path | None = None,
    num_images: int = 20,
    seed: int = 0,
    min_size: int = 200,
    max_size: int = 500,
    classes: tuple[int, ...] | None = None,
    class_list: ClassList | None = None,
) -> SyntheticSet:
    """Write up to three datasets of `num_images` images each; return their ids per split.

    VOC: train/val halves (+ trainval). SBD: ~80/20 train/val; a third of its ids are VOC
    ids (same picture, labels without void border), as in the real sets.
    `class_list`: the labels' classes (default VOC's 21); VOC masks use its palette and, when
    given, `<root>/classes.json` (CLASS_FILE) beside the VOC and SBD data is its class file.
    `classes`: which object classes (indices >= 1 of the list) to draw; default all.
    """
    if not 1 <= min_size <= max_size:
        raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
    if num_images < 2:
        raise ValueError("num_images must be at least 2 (one per split)")
    labels = class_list or voc_classes()
    drawn = tuple(range(1, labels.num_classes)) if classes is None else tuple(map(int, classes))
    if not drawn or not all(1 <= c < labels.num_classes for c in drawn):
        raise ValueError(f"classes must be object classes 1..{labels.num_classes - 1}")
    rng = np.random.default_rng(seed)
    pool = _ids(rng, 2 * num_images)
    voc_ids = sorted(rng.choice(pool, size=num_images, replace=False).tolist())
    shared = rng.choice(voc_ids, size=num_images // 3, replace=False).tolist()
    others = [i for i in pool if i not in set(voc_ids)]
    sbd_ids = sorted(shared + others[: num_images - len(shared)])
    out = SyntheticSet(classes=labels)

    def scene(image_id: str):
        r = rng_for(seed, image_id)
        h, w = _size(r, min_size, max_size)
        return render_scene(r, h, w, drawn)

    if voc is not None:
        out.voc = _write_voc(Path(voc), voc_ids, rng.permutation(voc_ids).tolist(), scene, labels)
    if sbd is not None:
        out.sbd = _write_sbd(Path(sbd), sbd_ids, rng.permutation(sbd_ids).tolist(), scene, labels)
    if unlabeled is not None:
        out.unlabeled = _write_unlabeled(Path(unlabeled), num_images, scene)
    if class_list is not None:
        text = json.dumps(class_list.to_dict(), indent=2) + "\n"
        for root in (voc, sbd):
            if root is not None:
                _write(Path(root) / CLASS_FILE, text.encode())
    return out


def _write_voc(root: Path, ids: list[str], order: list[str], scene, labels: ClassList) -> dict:
    half = len(ids) // 2
    splits = {"train": sorted(order[:half]), "val": sorted(order[half:]), "trainval": ids}
    palette = labels.palette()
    for image_id in ids:
        image, label = scene(image_id)
        label = void_border(label, _border_radius(*label.shape))
        _write(root / "JPEGImages" / f"{image_id}.jpg", encode_jpeg(image))
        _write(root / "SegmentationClass" / f"{image_id}.png", encode_mask(label, palette))
    for split, split_ids in splits.items():
        _write_list(root / "ImageSets" / "Segmentation" / f"{split}.txt", split_ids)
    return splits


def _write_sbd(root: Path, ids: list[str], order: list[str], scene, labels: ClassList) -> dict:
    root = root / "dataset"
    n_train = max(1, min(len(ids) - 1, round(0.8 * len(ids))))
    splits = {"train": sorted(order[:n_train]), "val": sorted(order[n_train:])}
    for image_id in ids:
        image, label = scene(image_id)
        _write(root / "img" / f"{image_id}.jpg", encode_jpeg(image))
        _write(root / "cls" / f"{image_id}.mat", encode_sbd_mat(label, labels.num_classes))
    for split, split_ids in splits.items():
        _write_list(root / f"{split}.txt", split_ids)
    return splits


def _write_unlabeled(root: Path, count: int, scene) -> list[str]:
    keys = []
    for i in range(count):
        folder = _UNLABELED_DIRS[i % len(_UNLABELED_DIRS)]
        ext = _UNLABELED_EXTS[i % len(_UNLABELED_EXTS)]
        key = f"{folder}/img_{i:05d}{ext}".lstrip("/")
        image, _ = scene(f"unlabeled/{i}")
        if ext.lower() == ".png":
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "PNG")
            data = buf.getvalue()
        else:
            data = encode_jpeg(image)
        _write(root / key, data)
        keys.append(key)
    # Non-image files sit in real buckets too; readers must skip them.
    _write(root / "README.txt", b"synthetic unlabeled images\n")
    return keys


def add_sideways_image(
    voc: str | Path,
    image_id: str = "2098_000001",
    split: str = "val",
    orientation: int = 6,
    size: tuple[int, int] = (48, 80),
    seed: int = 0,
    class_list: ClassList | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Add to a VOC-layout set one JPEG stored sideways with EXIF `orientation` (6 or 8) whose
    mask is drawn on the image as displayed (`size` = height, width as displayed); the id is
    appended to the `split` list (and to trainval for train and val).

    Returns the displayed image (H x W x 3, before JPEG) and its labels (H x W, void borders):
    what every reader must see once EXIF orientation is applied.
    """
    labels = class_list or voc_classes()
    rng = rng_for(seed, f"sideways {image_id}")
    image, label = render_scene(rng, *size, tuple(range(1, labels.num_classes)))
    label = void_border(label, 1)
    root = Path(voc)
    _write(root / "JPEGImages" / f"{image_id}.jpg", sideways_jpeg(image, orientation))
    _write(root / "SegmentationClass" / f"{image_id}.png", encode_mask(label, labels.palette()))
    for name in {split, "trainval"} if split in ("train", "val") else {split}:
        listed = root / "ImageSets" / "Segmentation" / f"{name}.txt"
        ids = listed.read_text().split() if listed.exists() else []
        _write_list(listed, sorted(set(ids) | {image_id}))
    return image, label


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m fcn.data.synthetic",
        description="Write deterministic synthetic VOC2012 / SBD / unlabeled image datasets.",
    )
    p.add_argument("--voc", help="VOC2012-layout root to write (JPEGImages, ...)")
    p.add_argument("--sbd", help="SBD-layout root to write (dataset/img, dataset/cls, ...)")
    p.add_argument("--unlabeled", help="root of a nested tree of unlabeled images")
    p.add_argument("--num-images", type=int, default=20, help="images per dataset")
    p.add_argument("--seed", type=int, default=0, help="same seed -> byte-identical files")
    p.add_argument("--min-size", type=int, default=200, help="smallest image side, px")
    p.add_argument("--max-size", type=int, default=500, help="largest image side, px")
    p.add_argument(
        "--classes",
        help="comma-separated object class indices to draw (default: every object class)",
    )
    p.add_argument(
        "--class-list",
        help=f"class file (the format `ingest --classes` reads) to label with instead of VOC's; "
        f"copied as {CLASS_FILE} beside the VOC and SBD data",
    )
    args = p.parse_args(argv)
    if not (args.voc or args.sbd or args.unlabeled):
        p.error("give at least one of --voc, --sbd, --unlabeled")
    classes = None
    if args.classes:
        classes = tuple(int(c) for c in args.classes.split(",") if c.strip())
    class_list = None
    if args.class_list:
        class_list = parse_class_list(Path(args.class_list).read_text())
    result = generate(
        args.voc,
        args.sbd,
        args.unlabeled,
        args.num_images,
        args.seed,
        args.min_size,
        args.max_size,
        classes,
        class_list,
    )
    for name, splits in (("VOC", result.voc), ("SBD", result.sbd)):
        for split, ids in splits.items():
            print(f"{name} {split}: {len(ids)} images")
    if result.unlabeled:
        print(f"unlabeled: {len(result.unlabeled)} images under {args.unlabeled}")


if __name__ == "__main__":
    main()
