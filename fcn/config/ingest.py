"""The ingest job's settings (jobs/ingest.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, flag, required, setting


@dataclass(frozen=True)
class IngestConfig(Settings):
    """Read VOC / SBD / unlabeled images and write validated Parquet shards."""

    output: str = required("where the Parquet dataset goes (s3://bucket/prefix or a local path)")
    voc: str | None = setting(None, "root of a VOC2011/2012 tree (holds JPEGImages/)")
    sbd: str | None = setting(None, "root of an SBD tree (holds dataset/img and dataset/cls)")
    unlabeled: str | None = setting(None, "prefix of unlabeled images (jpg/png, nested)")
    split: tuple[str, ...] = setting(
        (),
        "named id lists NAME=IDS_FILE (e.g. seg11valid=s3://.../seg11valid.txt); ids are taken "
        "from VOC when listed there, else from SBD; given lists replace the default splits",
    )
    classes: str | None = setting(
        None, "class list file: one 'name [R G B | #RRGGBB]' per line, or JSON; default: VOC 21"
    )
    preset: str | None = setting(
        None,
        "'reference': train = SBD train (SBD labels), val = VOC val (or each --split list) "
        "minus SBD train ids, i.e. seg11valid on VOC2011; no image in both",
        choices=("reference",),
        group="data",
    )
    voc_splits: tuple[str, ...] = setting(
        ("train", "val"), "VOC ImageSets/Segmentation lists to ingest (trainval is their union)"
    )
    # ~256 VOC images (~30 MB) per shard: enough files for parallel reads, few enough to list.
    rows_per_shard: int = setting(256, "rows per Parquet file (one Ray task writes one file)")
    # Row groups of ~32 images (~4 MB) let a streaming reader hold little in memory at once.
    rows_per_row_group: int = setting(32, "rows per Parquet row group")
    # VOC images are ~0.2 MP, phone photos up to ~50 MP; beyond this a file is treated as a
    # decompression bomb and rejected before any pixel is decoded.
    max_pixels: int = setting(64_000_000, "largest width x height accepted")
    # Reads are latency-bound on object stores: a few threads per task hide the round trips.
    read_threads: int = setting(8, "concurrent object reads inside each shard task")
    concurrency: int | None = setting(None, "max shard tasks at once (default: Ray decides)")

    def validate(self) -> IngestConfig:
        """Self; a ValueError naming the flag when a count is below 1."""
        for name in ("rows_per_shard", "rows_per_row_group", "max_pixels", "read_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1, got {getattr(self, name)}")
        return self
