"""The segment job's input, resolved once on the driver: a prefix of image objects, or an
ingested Parquet split (`uri` + `image` columns, fcn.data.ingest).

Parquet is read through `fcn.storage.pyarrow_filesystem` (pyarrow's native S3 client on S3),
the one route by which every job reads Parquet, with the endpoint and retry policy of
fcn.storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from fcn import storage
from fcn.nightly import plan
from fcn.storage import Location


@dataclass(frozen=True)
class Source:
    """Where tonight's images come from. It pickles (a Location and strings): the overlay
    tasks read images back through `image_bytes`."""

    location: Location
    files: tuple[str, ...] | None  # the split's Parquet files (paths); None: an image prefix

    @property
    def is_split(self) -> bool:
        return self.files is not None

    def split(self) -> pads.Dataset:
        """The split's files as one pyarrow dataset."""
        fs, _ = storage.pyarrow_filesystem(self.location.uri)
        return pads.dataset(list(self.files or ()), filesystem=fs, format="parquet")

    def read_split(self):
        """The split as a Ray Data dataset of (`uri`, `image`) rows."""
        import ray

        fs, _ = storage.pyarrow_filesystem(self.location.uri)
        return ray.data.read_parquet(list(self.files), filesystem=fs).select_columns(
            ["uri", "image"]
        )

    def split_uris(self) -> pa.ChunkedArray:
        """The split's `uri` column (Parquet reads it without the image bytes)."""
        if not self.files:
            return pa.chunked_array([], pa.string())
        return self.split().to_table(columns=["uri"]).column("uri")

    def image_bytes(self, uris: list[str]) -> dict[str, bytes]:
        """uri -> encoded bytes of a few images (the labeling queue's, the overlays')."""
        if not self.is_split or not uris:
            return {uri: storage.locate(uri).read_bytes() for uri in uris}
        wanted = pads.field("uri").isin(pa.array(uris, pa.string()))
        rows = self.split().to_table(columns=["uri", "image"], filter=wanted)
        uris, data = (rows.column(c).to_pylist() for c in ("uri", "image"))
        return dict(zip(uris, data, strict=True))


def resolve(input_format: str, input: Location, output: Location) -> Source:
    """`--input-format` (`auto`, `images`, `parquet`) resolved: `auto` is a split when the
    input holds Parquet files. Files under the output (masks, state, manifests) never count."""
    if input_format == "images":
        return Source(input, None)
    files = _parquet_files(input, output)
    if input_format == "parquet" or files:
        return Source(input, tuple(files))
    return Source(input, None)


def _parquet_files(input: Location, output: Location) -> list[str]:
    found = plan.collect(input.walk((".parquet",))).column("path")
    return pc.filter(found, pc.invert(pc.starts_with(found, output.path + "/"))).to_pylist()
