"""Ingest's plan, driver side and URIs only: which records go to which output split, cut into
shards of `rows_per_shard` records sorted by image id (so a re-run over the same input plans
the same shards, byte for byte).

Label precedence: when one output split lists the same id from VOC and SBD, the VOC mask wins.
VOC masks are the benchmark's own hand-checked ground truth with void (255) borders on
ambiguous pixels; SBD's crowd-sourced masks are coarser. The `reference` preset instead keeps
the reference recipe as published: train = SBD train with SBD masks.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import cached_property

from fcn.config import IngestConfig
from fcn.data import voc
from fcn.data.contract import ERRORS

log = logging.getLogger("fcn.data.ingest")
_SPLIT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Shard:
    split: str
    index: int
    records: tuple[voc.Record, ...]

    @property
    def key(self) -> str:
        return f"{self.split}/part-{self.index:05d}.parquet"

    @property
    def error_key(self) -> str:
        return f"{ERRORS}/{self.split}-part-{self.index:05d}.parquet"


def _parse_named_splits(entries: tuple[str, ...]) -> list[tuple[str, str]]:
    named = []
    for entry in entries:
        name, sep, uri = entry.partition("=")
        if not sep or not name or not uri:
            raise ValueError(f"--split wants NAME=IDS_FILE, got {entry!r}")
        named.append((name, uri))
    return named


def _check_split_name(name: str) -> None:
    if not _SPLIT_RE.match(name) or name == "unlabeled":
        raise ValueError(f"split name {name!r}: use letters, digits, '_', '.', '-'")


def _read_list(uri: str) -> list[str]:
    try:
        return voc.read_ids(uri)
    except FileNotFoundError:
        raise ValueError(f"id list {uri} does not exist") from None


Splits = dict[str, dict[str, voc.Record]]  # split -> image id -> record


@dataclass(frozen=True)
class _Lists:
    """The id lists of the sources given, and where an id's record comes from."""

    config: IngestConfig
    voc: dict[str, list[str]]
    sbd: dict[str, list[str]]

    @classmethod
    def read(cls, config: IngestConfig) -> _Lists:
        voc_splits = config.voc_splits if config.voc else ()
        sbd_splits = voc.SBD_SPLITS if config.sbd else ()
        return cls(
            config,
            {s: _read_list(voc.voc_split_uri(config.voc, s)) for s in voc_splits},
            {s: _read_list(voc.sbd_split_uri(config.sbd, s)) for s in sbd_splits},
        )

    @cached_property
    def voc_ids(self) -> set[str]:
        return {i for ids in self.voc.values() for i in ids}

    @cached_property
    def sbd_ids(self) -> set[str]:
        return {i for ids in self.sbd.values() for i in ids}

    def lookup(self, image_id: str, split: str) -> voc.Record:
        # An id in neither list still gets a record from the first source given, so a bad
        # list entry surfaces as a missing_image error row instead of vanishing.
        if self.config.voc and (image_id in self.voc_ids or image_id not in self.sbd_ids):
            return voc.voc_record(self.config.voc, image_id, split)
        return voc.sbd_record(self.config.sbd, image_id, split)


def plan_records(config: IngestConfig) -> tuple[dict[str, list[voc.Record]], dict]:
    """Records per output split, and notes for the summary (precedence, overlaps).

    Default: VOC lists (`voc_splits`) and SBD lists, merged by split name, VOC mask wins.
    `--split NAME=FILE`: exactly the named lists (ids from VOC where listed there, else SBD).
    `--preset reference`: train = SBD train; the other splits lose any id in SBD train.
    """
    if not (config.voc or config.sbd or config.unlabeled):
        raise ValueError("give at least one source: --voc, --sbd or --unlabeled")
    named = _parse_named_splits(config.split)
    if (named or config.preset) and not (config.voc or config.sbd):
        raise ValueError("--split and --preset need --voc or --sbd")
    lists = _Lists.read(config)
    splits: Splits = defaultdict(dict)
    notes: dict = {"label_precedence": "voc"}
    if config.preset == "reference":
        _reference(lists, named, splits, notes)
    elif named:
        for name, uri in named:
            for image_id in _read_list(uri):
                splits[name].setdefault(image_id, lists.lookup(image_id, name))
    else:
        _merged(lists, splits, notes)
    for name in splits:
        _check_split_name(name)
    # The same picture in two labeled splits leaks evaluation data into training.
    seen = Counter(i for recs in splits.values() for i in recs)
    notes["ids_in_several_splits"] = sum(1 for n in seen.values() if n > 1)
    if notes["ids_in_several_splits"]:
        log.warning(
            "%d ids appear in more than one split (use --preset reference for a clean val)",
            notes["ids_in_several_splits"],
        )
    out = {name: [recs[i] for i in sorted(recs)] for name, recs in sorted(splits.items())}
    if config.unlabeled:
        out["unlabeled"] = sorted(voc.list_images(config.unlabeled), key=lambda r: r.image_id)
    return out, notes


def _reference(lists: _Lists, named: list[tuple[str, str]], splits: Splits, notes: dict) -> None:
    """`--preset reference`: train = SBD train with SBD masks; val (or each named list) minus
    the SBD train ids."""
    config = lists.config
    if not (config.voc and config.sbd):
        raise ValueError("--preset reference needs both --voc and --sbd")
    notes["label_precedence"] = "reference: train from SBD, other splits from VOC"
    sbd_train = set(lists.sbd["train"])
    for image_id in lists.sbd["train"]:
        splits["train"][image_id] = voc.sbd_record(config.sbd, image_id, "train")
    others = named or [("val", voc.voc_split_uri(config.voc, "val"))]
    dropped = {}
    for name, uri in others:
        ids = _read_list(uri)
        dropped[name] = sum(i in sbd_train for i in ids)
        for image_id in ids:
            if image_id not in sbd_train:
                splits[name].setdefault(image_id, lists.lookup(image_id, name))
    notes["removed_because_in_sbd_train"] = dropped


def _merged(lists: _Lists, splits: Splits, notes: dict) -> None:
    """The default: VOC and SBD lists merged by split name, the VOC mask winning."""
    config = lists.config
    for split, ids in lists.voc.items():
        for image_id in ids:
            splits[split].setdefault(image_id, voc.voc_record(config.voc, image_id, split))
    superseded = Counter()
    for split, ids in lists.sbd.items():
        for image_id in ids:
            if image_id in splits[split]:
                superseded[split] += splits[split][image_id].source == "voc"
                continue
            splits[split][image_id] = voc.sbd_record(config.sbd, image_id, split)
    notes["sbd_superseded_by_voc"] = dict(sorted(superseded.items()))


def plan_shards(records: dict[str, list[voc.Record]], rows_per_shard: int) -> list[Shard]:
    if rows_per_shard < 1:
        raise ValueError("rows_per_shard must be >= 1")
    shards = []
    for split, recs in records.items():
        # An empty split still gets one (empty) shard so its schema can be read.
        for index, start in enumerate(range(0, max(len(recs), 1), rows_per_shard)):
            shards.append(Shard(split, index, tuple(recs[start : start + rows_per_shard])))
    return shards
