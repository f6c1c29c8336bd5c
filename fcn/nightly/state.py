"""What the segment job has done, in a table the size of the bucket (docs/nightly.md).

Under `<output>/`:
  `_state/snapshot-<run id>.parquet`   latest row per image (schema.STATE); normally one file
  `_state/parts/<run id>/<uuid>.parquet` rows of one finished batch, written as it finishes
  `_runs/<run id>.parquet`              the run's manifest (fcn.nightly.manifest), a report

Every file is immutable and written whole (fcn.storage). The state is the union of every
snapshot and part present, latest row per `uri` by `time`: a union is order-free and
idempotent, so a merge that folds files into a new snapshot and then deletes exactly the files
it read can be killed at any point, or race another run's merge, without losing a row (at
worst two snapshots sit side by side until the next merge folds them). The first run over an
output written by the old layout (`_manifest/`) folds its rows in the same way and moves its
run manifests to `_runs/`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fcn.nightly import schema
from fcn.storage import Location

STATE = "_state"
RUNS = "_runs"
LEGACY = "_manifest"
READ_CHUNK = 256  # files fetched at once while merging: bounded memory, overlapped round trips


def parts_dir(output: Location, run_id: str) -> Location:
    return output.child(f"{STATE}/parts/{run_id}")


def run_manifest(output: Location, run_id: str) -> Location:
    return output.child(f"{RUNS}/{run_id}.parquet")


def _sources(output: Location) -> list[str]:
    """Paths of every file the state is the union of, the old layout's included."""
    found = []
    for folder in (STATE, LEGACY):
        for chunk in output.child(folder).walk((".parquet",)):
            found += chunk.column("path").to_pylist()
    return found


def _conform(table: pa.Table, legacy: bool) -> pa.Table:
    """schema.STATE columns of a snapshot, a part or an old manifest; finished rows only."""
    out = schema.conform(table, schema.STATE)
    out = out.filter(pc.is_in(out.column("status"), schema.FINISHED))
    if legacy:  # the old etag was Python's repr of the mtime: `20:2.0` is `20:2` here
        etag = pc.replace_substring_regex(out.column("etag"), r"^(\d+:-?\d+)\.0$", r"\1")
        out = out.set_column(schema.STATE.get_field_index("etag"), "etag", etag)
    return out


def latest(table: pa.Table) -> pa.Table:
    """The latest row (by `time`) of each `uri`."""
    table = table.filter(pc.is_valid(table.column("uri")))
    if table.num_rows < 2:
        return table
    table = table.set_column(
        schema.STATE.get_field_index("time"), "time", pc.fill_null(table.column("time"), 0.0)
    )
    table = table.sort_by([("uri", "ascending"), ("time", "ascending")])
    uri = table.column("uri").combine_chunks()
    last = pc.not_equal(uri.slice(0, len(uri) - 1), uri.slice(1))
    return table.filter(pa.concat_arrays([last, pa.array([True])]))


def read(output: Location) -> tuple[pa.Table, list[str]]:
    """(the state: latest row per image, the paths it was read from).

    A file that vanished since the listing was folded by an overlapping run's merge (whose
    snapshot this run may not see: its rows wait for the next run, nothing is lost). An
    unreadable file is reported and kept out of the paths, so no merge ever deletes it.
    """
    tables, read_paths = [], []
    paths = _sources(output)
    legacy_root = output.child(LEGACY).path + "/"
    for start in range(0, len(paths), READ_CHUNK):
        chunk = paths[start : start + READ_CHUNK]
        for path, data in output.fs.cat(chunk, on_error="return").items():
            if isinstance(data, FileNotFoundError):
                continue
            try:
                if isinstance(data, Exception):
                    raise data
                table = pq.read_table(io.BytesIO(data))
            except Exception as err:  # noqa: BLE001 - one bad file must not stop the night
                print(f"warning: ignoring unreadable state file {path}: {err}", file=sys.stderr)
                continue
            tables.append(_conform(table, legacy=path.startswith(legacy_root)))
            read_paths.append(path)
    if not tables:
        return schema.STATE.empty_table(), read_paths
    return latest(pa.concat_tables(tables)), read_paths


def merge(output: Location, run_id: str) -> Location:
    """Fold every snapshot and part present (this run's, killed runs', overlapping runs') into
    one new snapshot, then delete what was folded. Returns the new snapshot's location."""
    state, folded = read(output)
    snapshot = output.child(f"{STATE}/snapshot-{run_id}.parquet")
    write_snapshot(snapshot, state)
    legacy_runs = output.child(LEGACY).path + "/"
    for path in folded:
        if path == snapshot.path:
            continue
        name = path[len(legacy_runs) :]
        if path.startswith(legacy_runs) and "/" not in name:  # an old run's report: keep it
            target = run_manifest(output, name[: -len(".parquet")]).path
            if output.local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
            output.fs.mv(path, target)
        else:
            Location(output.fs, path, output.scheme).delete()
    _drop_empty_dirs(output)
    return snapshot


def write_snapshot(snapshot: Location, state: pa.Table) -> None:
    """The new snapshot, whole: from here on the files it folded are redundant."""
    buffer = io.BytesIO()
    pq.write_table(state, buffer)
    snapshot.write_bytes(buffer.getvalue())


def _drop_empty_dirs(output: Location) -> None:
    """Local outputs keep directories: remove the part and old-layout folders left empty."""
    if not output.local:
        return
    for folder in (f"{STATE}/parts", LEGACY):
        root = output.child(folder).path
        for current, _dirs, _files in os.walk(root, topdown=False):  # children first
            # OSError: not empty (another run's parts, kept on purpose) or already gone.
            with contextlib.suppress(OSError):
                os.rmdir(current)
