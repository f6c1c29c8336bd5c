"""Class lists: the 21 PASCAL VOC classes (the default) and user label sets.

A class list is what ingest records in its summary and what training, evaluation and
segmentation take `num_classes`, names and palette from, so a model trained on a custom
set writes masks in that set's colors.

Colours are unique within a list: masks are painted, and the CVAT labeling export is read
back, by colour, so two classes sharing one would become one class. A class given without a
colour gets the VOC colour of its index, or, when another class of the list already has that
colour (`road 128 0 0` then `car`), the first free VOC palette entry after the list's own
indices: assigned, not refused, because a list without colours is the common case and any
free colour serves. Two classes given the same colour explicitly are refused (one line: which
of them is meant is the user's call). A list recorded before colours were unique (a dataset
summary, a checkpoint's config.json) still loads: `from_dict` recolours the later duplicates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

VOID = 255  # label ignored by the loss and the metrics (VOC object borders)


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC palette: n x 3 uint8, entry i is the color of class index i (255 -> void).

    Built by the devkit's bit-interleaving rule, so it matches the palette stored in the
    official SegmentationClass PNGs byte for byte.
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


@dataclass(frozen=True)
class ClassList:
    """Ordered class names (index = label value) and one RGB color per class."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]

    def __post_init__(self):
        if not self.names:
            raise ValueError("a class list needs at least one class")
        if len(self.names) > 255:
            raise ValueError(f"at most 255 classes (255 is void), got {len(self.names)}")
        if len(set(self.names)) != len(self.names):
            raise ValueError("class names must be unique")
        if len(self.colors) != len(self.names):
            raise ValueError("one color per class")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def palette(self) -> np.ndarray:
        """256 x 3 uint8 palette for mask PNGs: class colors first, VOC colors elsewhere."""
        cmap = voc_colormap()
        cmap[: self.num_classes] = np.asarray(self.colors, dtype=np.uint8)
        return cmap

    def to_dict(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
        }

    @classmethod
    def from_dict(cls, d: dict) -> ClassList:
        """A recorded list (`to_dict`); a colour an earlier class has is reassigned."""
        names = tuple(d["names"])
        colors = d.get("colors")
        if colors is not None:
            seen: set = set()
            kept = []
            for color in colors:
                rgb = None if color is None else tuple(color)
                kept.append(None if rgb in seen else color)
                seen.add(rgb)
            colors = kept
        return cls.from_names(names, colors)

    @classmethod
    def from_names(cls, names, colors=None) -> ClassList:
        """Names and colours (None: assign one; see the module docstring)."""
        names = tuple(str(n) for n in names)
        if len(names) > VOID:  # before assigning: only 255 colours to go round
            raise ValueError(f"at most 255 classes (255 is void), got {len(names)}")
        if colors is None:
            colors = [None] * len(names)
        given: dict[tuple[int, int, int], str] = {}
        for name, color in zip(names, colors, strict=False):
            if color is None:
                continue
            rgb = tuple(int(v) for v in color)
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError(f"class {name!r}: color must be 3 values 0-255")
            if rgb in given:
                raise ValueError(
                    f"classes {given[rgb]!r} and {name!r} have the same color "
                    f"{' '.join(map(str, rgb))}: masks and label exports could not tell them apart"
                )
            given[rgb] = name
        return cls(names, _assign_colors(colors, set(given)))


def _assign_colors(colors, taken: set) -> tuple[tuple[int, int, int], ...]:
    """`colors` with each None replaced: the VOC colour of its index when free (a custom set
    that keeps the VOC order then looks exactly like VOC), else the first free entry of the
    VOC palette after the list's own indices (then before them; never void's)."""
    cmap = [tuple(int(v) for v in c) for c in voc_colormap()[:VOID]]
    spare = cmap[len(colors) :] + cmap[: len(colors)]
    resolved = []
    for i, color in enumerate(colors):
        if color is not None:
            resolved.append(tuple(int(v) for v in color))
            continue
        rgb = cmap[i] if i < len(cmap) and cmap[i] not in taken else None
        if rgb is None:
            rgb = next(c for c in spare if c not in taken)
        taken.add(rgb)
        resolved.append(rgb)
    return tuple(resolved)


def voc_classes() -> ClassList:
    return ClassList.from_names(VOC_CLASSES)


def default_classes(num_classes: int) -> ClassList:
    """VOC at 21 classes, else classes named by their index ("0", "1", ...) in VOC colors."""
    if num_classes == len(VOC_CLASSES):
        return voc_classes()
    return ClassList.from_names([str(c) for c in range(num_classes)])


def classes_of(config: dict) -> ClassList:
    """The class list a checkpoint's config.json records (`classes`); checkpoints written
    before class lists travelled have only `class_names` or just `num_classes`."""
    if isinstance(config.get("classes"), dict):
        found = ClassList.from_dict(config["classes"])
    elif config.get("class_names"):
        found = ClassList.from_names(config["class_names"])
    else:
        return default_classes(int(config["num_classes"]))
    if found.num_classes != int(config["num_classes"]):
        raise ValueError(
            f"config.json names {found.num_classes} classes but says num_classes "
            f"{config['num_classes']}"
        )
    return found


def parse_class_list(text: str) -> ClassList:
    """Parse a user class file.

    Accepted forms:
      - JSON: a list of names, a list of {"name", "color"} objects, or {"names", "colors"};
      - text: one class per line, `name` or `name R G B` or `name #RRGGBB`; blank lines and
        lines starting with `#` are skipped. Line order = label value.
    """
    stripped = text.strip()
    if stripped.startswith(("[", "{")):
        data = json.loads(stripped)
        if isinstance(data, dict):  # a user's file: the same colour twice is refused
            return ClassList.from_names(data["names"], data.get("colors"))
        names, colors = [], []
        for item in data:
            if isinstance(item, str):
                names.append(item)
                colors.append(None)
            else:
                names.append(item["name"])
                colors.append(item.get("color"))
        return ClassList.from_names(names, colors)
    names, colors = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        names.append(parts[0])
        rest = parts[1:]
        if not rest:
            colors.append(None)
        elif len(rest) == 1 and rest[0].startswith("#") and len(rest[0]) == 7:
            colors.append(tuple(int(rest[0][k : k + 2], 16) for k in (1, 3, 5)))
        elif len(rest) == 3:
            colors.append(tuple(int(v) for v in rest))
        else:
            raise ValueError(f"class file line {lineno}: expected 'name [R G B | #RRGGBB]'")
    return ClassList.from_names(names, colors)
