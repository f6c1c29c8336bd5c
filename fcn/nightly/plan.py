"""Tonight's work for an image prefix: the listing joined with the state, all in Arrow.

Each image key maps to one mask key (`fcn.masks.mask_key`); a key that is another spelling
of a key (`a/./b.png`, `a//b.png`) is refused, and of two images wanting one mask key the one
whose mask it already is keeps it (else the first in key order): the other is an error row,
never a takeover. An image is done when the state has its `uri` with the same `etag`
(`size:mtime` of the object) and status `ok` with its mask still present at the key it maps
to, or status `error` (unless `--retry-errors`). What is not done is tonight's work, oldest
first (by the object's mtime), then, with `--resegment-older-models`, the unchanged images
whose mask an older model made (oldest mask first); `--max-images` cuts the list and the rest
waits for the next night.
The driver holds a few Arrow columns per listed image and no Python object per image, so 1M+
keys plan in bounded memory.

An ingested Parquet split (`plan_split`) is planned the same way from its `uri` column alone
(the key is the uri without its scheme, so `s3://b/x.jpg` -> `<output>/b/x.png`), with the
same collision rule; only the last step, whether the image's bytes changed, waits for the
bytes (see `SplitPlan`).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fcn import storage
from fcn.config import SegmentConfig
from fcn.engine import images
from fcn.nightly import masks, schema
from fcn.nightly.schema import Status
from fcn.storage import WALK_SCHEMA, Location
from fcn.tracking import REGISTRY_VERSION

TODO_COLUMNS = ("uri", "path", "mask_uri", "mask_key", "etag", "size")
# Keys the vectorized mapping cannot take as they are: odd characters, `.`/`..` segments,
# hidden basenames, doubled slashes. They go through fcn.storage's checks one by one.
ODD_KEY = r"\\|\x00|(^|/)\.|//"


@dataclass
class Plan:
    todo: pa.Table  # TODO_COLUMNS, in the order to segment them
    refused: pa.Table  # schema.REFUSED: keys that cannot get a mask
    listed: int
    unchanged: int
    deferred: int  # over --max-images: waits for the next night
    resegment: int  # of `todo`: unchanged images whose mask came from an older model


@dataclass
class SplitPlan:
    """Tonight's work in an ingested split. Its image version (`sha256:` of the bytes) is
    known only once a CPU stage reads the bytes, so the driver hands that stage `known`: one
    Arrow table, put in the object store once and probed per row by binary search
    (fcn.nightly.stages.decide_parquet), so a batch's cost does not grow with the state."""

    known: pa.Table  # uri (sorted, unique), etag: skipped while the bytes hash to etag;
    #                  etag null: refused (the stage drops the row, the driver reports it)
    refused: pa.Table  # schema.REFUSED, as Plan.refused (etag, size null)
    # The split's rasters (references: no bytes in Parquet) are planned here in full, their
    # etag from the object as for an image prefix: TODO_COLUMNS' uri, mask_uri, etag, size.
    rasters: pa.Table = dataclasses.field(default_factory=pa.table)
    unchanged_rasters: int = 0


def collect(chunks) -> pa.Table:
    """One table from `Location.walk` chunks."""
    tables = list(chunks)
    return pa.concat_tables(tables) if tables else WALK_SCHEMA.empty_table()


def list_images(input: Location, output: Location) -> pa.Table:
    """`path`, `size`, `mtime` of the images under `input`, minus anything under `output`
    (masks written inside the input tree must not come back as images the next night)."""
    _check_apart(input, output)
    found = collect(input.walk(images.IMAGE_EXTENSIONS + images.RASTER_EXTENSIONS))
    inside = pc.starts_with(found.column("path"), output.path + "/")
    return found.filter(pc.invert(inside))


def _check_apart(input: Location, output: Location) -> None:
    if input.fs.protocol == output.fs.protocol and input.path == output.path:
        raise ValueError("--output must differ from --input: masks would overwrite images")


def existing_masks(output: Location) -> pa.Array:
    """URIs of the masks under `output`, PNGs and rasters' GeoTIFFs (an `ok` row counts only
    while its mask exists)."""
    kinds = (images.MASK_EXTENSION, images.RASTER_MASK_EXTENSION)
    paths = pa.chunked_array(list(output.paths(kinds)), pa.string())
    return _uris(output, paths).combine_chunks()


def list_both(input: Location, output: Location) -> tuple[pa.Table, pa.Array]:
    """(`list_images(input, output)`, `existing_masks(output)`), listed at the same time: on an
    object store each is a long series of page requests, and with both in flight one's round
    trips and response parsing hide behind the other's. Planning 200,000 images on the S3
    test server (benchmarks/segment_scale.py): 78 s one after the other, 63 s at the same
    time, 54 s with the masks listed through pyarrow (`Location.paths`, C++ page parsing that
    lets go of the GIL), 17 s of it the driver's CPU. Both go through pyarrow since a million
    images took 145-224 s with the images listed through s3fs (benchmarks/listing.py)."""
    _check_apart(input, output)
    pool = ThreadPoolExecutor(1, thread_name_prefix="list-masks")
    try:
        masks_listed = pool.submit(existing_masks, output)
        return list_images(input, output), masks_listed.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # an error in one need not wait on both


def _uris(where: Location, paths) -> pa.ChunkedArray:
    if where.local:
        return paths
    return pc.binary_join_element_wise(f"{where.scheme}://", paths, "")


def older_models(
    models: list[str | None], current: str, retired: frozenset[str] = frozenset()
) -> list[str]:
    """Of the models that made masks, those older than `current`: a lower registry version of
    the same registered model, or any other model URI (checkpoints carry no order); a higher
    version counts only when `retired` holds it (the champion was rolled back from it)."""
    mine = REGISTRY_VERSION.fullmatch(current)
    older = []
    for model in models:
        if model is None or model == current:
            continue
        theirs = REGISTRY_VERSION.fullmatch(model)
        newer = mine and theirs and theirs[1] == mine[1] and int(theirs[2]) > int(mine[2])
        if newer and model not in retired:
            continue  # made by a newer version the champion was not rolled back from
        older.append(model)
    return older


def _mask_keys(input: Location, keys: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """(mask key or null, the refusal reason or null) for each image key."""
    keys = keys.combine_chunks()
    # posixpath.splitext's rule (fcn.masks.mask_key) for keys without a leading-dot basename
    roots = pc.replace_substring_regex(keys, r"(\.[^./]*)?$", "", max_replacements=1)
    raster = pc.match_substring_regex(keys, masks.RASTER_KEY)
    extensions = pc.if_else(raster, images.RASTER_MASK_EXTENSION, images.MASK_EXTENSION)
    mask_keys = pc.binary_join_element_wise(roots, extensions, "")
    odd = pc.match_substring_regex(keys, ODD_KEY)
    reasons = pa.nulls(len(keys), pa.string())
    odd_rows = np.flatnonzero(odd.to_numpy(zero_copy_only=False))
    if len(odd_rows):
        fixed, why = [], []
        for key in keys.take(pa.array(odd_rows)).to_pylist():
            try:
                normalized = input.child(key).path[len(input.path) + 1 :]
                fixed.append(masks.mask_key(normalized))
                why.append(None)
            except ValueError as err:
                fixed.append(None)
                why.append(f"bad object key: {err}")
        mask_keys = pc.replace_with_mask(mask_keys, odd, pa.array(fixed, pa.string()))
        reasons = pc.replace_with_mask(reasons, odd, pa.array(why, pa.string()))
    return mask_keys, reasons


def _owners(table: pa.Table, state: pa.Table) -> pa.Table:
    """`table` with an `owner` column: True where the state says this image's mask is at its
    mask key (`ok` on an earlier night), so a newcomer never takes an existing mask over."""
    owned = state.filter(schema.where(state, Status.OK)).select(["uri", "mask_uri"])
    owned = owned.append_column("owner", pa.array(np.ones(owned.num_rows, dtype=bool)))
    table = table.join(owned, ["uri", "mask_uri"], join_type="left outer")
    return table.set_column(
        table.column_names.index("owner"), "owner", pc.fill_null(table.column("owner"), False)
    )


def _taken(table: pa.Table) -> pa.Table:
    """Sorted by mask_uri, with `error` set where another image already took the mask key
    (`a/x.jpg` and `a/x.png` both want `a/x.png`): its owner in the state wins, else the first
    in key order; the others are error rows, tonight and on every later night."""
    table = table.sort_by(
        [("mask_uri", "ascending"), ("owner", "descending"), ("uri", "ascending")]
    )
    mask_uri = table.column("mask_uri").combine_chunks()
    n = len(mask_uri)
    if n < 2:
        return table
    dup = np.concatenate(  # row i repeats row i - 1's mask key
        [
            [False],
            pc.fill_null(pc.equal(mask_uri.slice(1), mask_uri.slice(0, n - 1)), False).to_numpy(
                zero_copy_only=False
            ),
        ]
    )
    if not dup.any():
        return table
    first = np.maximum.accumulate(np.where(dup, 0, np.arange(n)))
    uris = table.column("uri")
    reasons = [
        f"mask key {mask_uri[int(i)].as_py()} is already taken by {uris[int(first[i])].as_py()}"
        for i in np.flatnonzero(dup)
    ]
    error = pc.replace_with_mask(
        table.column("error").combine_chunks(), pa.array(dup), pa.array(reasons, pa.string())
    )
    return table.set_column(table.column_names.index("error"), "error", error)


def _candidates(listing: pa.Table, state: pa.Table, input: Location, output: Location):
    """The listing with its uri, etag, mask location and any refusal reason."""
    paths = listing.column("path")
    keys = pc.utf8_slice_codeunits(paths, len(input.path) + 1)
    mask_keys, reasons = _mask_keys(input, keys)
    etag = _etag(listing.column("size"), listing.column("mtime"))
    table = pa.table(
        {
            "uri": _uris(input, paths),
            "path": paths,
            "mask_uri": pc.binary_join_element_wise(output.uri + "/", mask_keys, ""),
            "mask_key": mask_keys,
            "etag": etag,
            "size": listing.column("size"),
            "mtime": pc.fill_null(listing.column("mtime"), 0.0),
            "error": reasons,
        }
    )
    return _taken(_owners(table, state))


def _etag(size, mtime):
    """An object's version, `size:mtime` as listed (null where the size is)."""
    mtime = pc.fill_null(pc.cast(mtime, pa.string()), "None")
    return pc.binary_join_element_wise(pc.cast(size, pa.string()), mtime, ":")


def _decide(
    table: pa.Table, existing: pa.Array, config: SegmentConfig, model: str, retired=frozenset()
) -> pa.Table:
    """`table` (candidates joined with the state, `prev_*`) with `todo` and `older` columns."""
    prev_status = table.column("prev_status")
    same = pc.fill_null(pc.equal(table.column("prev_etag"), table.column("etag")), False)
    mask_ok = pc.and_(
        pc.equal(table.column("prev_mask_uri"), table.column("mask_uri")),
        pc.is_in(table.column("mask_uri"), value_set=existing),
    )
    ok = pc.fill_null(pc.and_(pc.equal(prev_status, Status.OK), mask_ok), False)
    failed = pc.fill_null(pc.equal(prev_status, Status.ERROR), False)
    done = pc.and_(same, pc.or_(ok, failed) if not config.retry_errors else ok)
    if config.force:
        done = pc.and_(done, False)
    older = pc.and_(done, False)
    if config.resegment_older_models:
        models = pc.unique(table.column("prev_model")).to_pylist()
        stale = pa.array(older_models(models, model, retired), pa.string())
        older = pc.and_(ok, pc.fill_null(pc.is_in(table.column("prev_model"), stale), False))
        older = pc.and_(done, older)
    return table.append_column("todo", pc.invert(done)).append_column("older", older)


def _previous(state: pa.Table) -> pa.Table:
    """The state's rows to join a listing with: `uri` and the rest as `prev_<column>`."""
    prev = state.select(["uri", "etag", "mask_uri", "status", "model", "time"])
    return prev.rename_columns(["uri"] + [f"prev_{n}" for n in prev.column_names[1:]])


def plan(
    listing: pa.Table,
    state: pa.Table,
    existing: pa.Array,
    input: Location,
    output: Location,
    config: SegmentConfig,
    model: str,
    retired: frozenset[str] = frozenset(),
) -> Plan:
    """Tonight's work (see the module docstring); `existing`: from `existing_masks`;
    `retired`: model URIs a rollback moved the champion away from (`older_models`)."""
    candidates = _candidates(listing, state, input, output)
    bad = pc.is_valid(candidates.column("error"))
    refused = schema.conform(candidates.filter(bad), schema.REFUSED)
    candidates = candidates.filter(pc.invert(bad))
    table = candidates.join(_previous(state), "uri", join_type="left outer")
    table = _decide(table, existing, config, model, retired)
    fresh = table.filter(table.column("todo")).sort_by(
        [("mtime", "ascending"), ("uri", "ascending")]
    )
    older = table.filter(table.column("older"))
    older = older.sort_by([("prev_time", "ascending"), ("uri", "ascending")])
    todo = pa.concat_tables([fresh.select(TODO_COLUMNS), older.select(TODO_COLUMNS)])
    budget = todo.num_rows if config.max_images is None else config.max_images
    return Plan(
        todo=todo.slice(0, budget),
        refused=refused,
        listed=listing.num_rows,
        unchanged=table.num_rows - todo.num_rows,
        deferred=max(0, todo.num_rows - budget),
        resegment=max(0, min(budget, todo.num_rows) - fresh.num_rows),
    )


def split_key(uri: str) -> str:
    """An ingested row's image key: its uri without the scheme (`s3://b/x.jpg` -> `b/x.jpg`);
    `_split_keys` is the same rule over a column."""
    return uri.split("://", 1)[-1].lstrip("/")


def _split_keys(uris: pa.Array) -> pa.ChunkedArray:
    keys = pc.replace_substring_regex(uris, "^.*?://", "", max_replacements=1)
    return pa.chunked_array([pc.utf8_ltrim(keys, "/")])


def plan_split(
    uris: pa.ChunkedArray,
    state: pa.Table,
    existing: pa.Array,
    output: Location,
    config: SegmentConfig,
    model: str,
    retired: frozenset[str] = frozenset(),
) -> SplitPlan:
    """Tonight's work in an ingested split from its `uri` column (see `SplitPlan`): the rules
    of `plan`, with the image's bytes assumed unchanged (the stage checks that)."""
    # A uri twice is one image; `string` whatever the writer used (schema.URI, the state's).
    uris = pc.unique(uris.combine_chunks().cast(schema.URI.type)).drop_null()
    mask_keys, reasons = _mask_keys(output, _split_keys(uris))
    table = pa.table(
        {
            "uri": uris,
            "mask_uri": pc.binary_join_element_wise(output.uri + "/", mask_keys, ""),
            "error": reasons,
        }
    )
    table = _taken(_owners(table, state))
    table = _with_rasters(table, uris)
    bad = pc.is_valid(table.column("error"))
    refused = schema.conform(table.filter(bad), schema.REFUSED)  # no etag, no size: unread
    table = table.filter(pc.invert(bad)).join(_previous(state), "uri", join_type="left outer")
    # An image's etag is its bytes' digest, known once the stage reads them: assume the last
    # one here. A raster's is its object's, known now.
    etag = pc.coalesce(table.column("raster_etag"), table.column("prev_etag"))
    table = _decide(table.append_column("etag", etag), existing, config, model, retired)
    todo = pc.or_(table.column("todo"), table.column("older"))
    raster = pc.is_valid(table.column("raster_etag"))
    rasters = table.filter(pc.and_(raster, todo)).select(["uri", "mask_uri", "etag", "size"])
    done = table.filter(pc.invert(todo))
    known = pa.concat_tables([done.select(["uri", "etag"]), refused.select(["uri", "etag"])])
    return SplitPlan(
        known=known.sort_by("uri").combine_chunks(),
        refused=refused,
        rasters=rasters,
        unchanged_rasters=pc.sum(pc.and_(raster, pc.invert(todo))).as_py() or 0,
    )


def _with_rasters(table: pa.Table, uris: pa.Array) -> pa.Table:
    """`table` with `raster_etag` and `size`, set for the split's rasters (references: each
    object is looked up, a few requests a night); a raster gone from its bucket is an error
    row. Only the rasters' rows become Python objects."""
    refs = uris.filter(pc.match_substring_regex(uris, masks.RASTER_KEY)).to_pylist()
    if not refs:  # photos only (the usual split): no join over every row
        none = pa.nulls(table.num_rows)
        table = table.append_column("raster_etag", none.cast(pa.string()))
        return table.append_column("size", none.cast(pa.int64()))
    with ThreadPoolExecutor(8, thread_name_prefix="stat-rasters") as pool:
        stats = list(pool.map(_stat, refs))
    found = [s if isinstance(s, tuple) else (None, None) for s in stats]
    size = pa.array([size for size, _ in found], pa.int64())
    looked_up = pa.table(
        {
            "uri": pa.array(refs, schema.URI.type),
            "raster_etag": _etag(size, pa.array([mtime for _, mtime in found], pa.float64())),
            "size": size,
            "gone": pa.array(
                [None if isinstance(s, tuple) else f"listed raster is gone: {s}" for s in stats],
                pa.string(),
            ),
        }
    )
    table = table.join(looked_up, "uri", join_type="left outer")
    error = pc.coalesce(table.column("error"), table.column("gone"))
    table = table.set_column(table.column_names.index("error"), "error", error)
    return table.drop_columns(["gone"])  # a gone raster's etag is null: its size is


def _stat(uri: str) -> tuple[int, float | None] | str:
    """(size, mtime) of the object at `uri`, or why it cannot be read."""
    try:
        return storage.locate(uri).stat()
    except FileNotFoundError as err:
        return str(err) or uri
