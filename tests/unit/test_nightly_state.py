"""The segment job's state: union of immutable files, latest row per image, merge and the
migration of the old `_manifest/` layout (local files; the S3 variants run in integration)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from fcn import storage
from fcn.nightly import manifest, schema, state


def rows(table: pa.Table) -> dict[str, dict]:
    return {r["uri"]: r for r in table.to_pylist()}


def test_latest_row_per_image_wins():
    table = pa.Table.from_pylist(
        [
            {"uri": "b", "status": "ok", "time": 2.0},
            {"uri": "a", "status": "error", "time": 5.0},
            {"uri": "b", "status": "error", "time": 1.0},
            {"uri": "a", "status": "ok", "time": 3.0},
        ],
        schema.STATE,
    )
    assert {u: r["status"] for u, r in rows(state.latest(table)).items()} == {
        "a": "error",
        "b": "ok",
    }


def test_merge_folds_parts_and_snapshots_into_one_and_loses_nothing(tmp_path):
    out = storage.locate(str(tmp_path / "out"))
    for run, uris in (("r1", ["a", "b"]), ("r2", ["b", "c"])):
        part = state.parts_dir(out, run).child("p.parquet")
        table = manifest.to_table(
            [{"uri": u, "status": "ok", "etag": run, "time": float(run[1])} for u in uris]
        )
        manifest.write(part, table)
    first = state.merge(out, "m1")
    # An overlapping run's snapshot lands beside it (it read an older state): the union holds.
    other = pa.Table.from_pylist([{"uri": "d", "status": "ok", "time": 9.0}], schema.STATE)
    pq.write_table(other, out.child("_state/snapshot-m0.parquet").path)
    table, sources = state.read(out)
    assert {u: r["etag"] for u, r in rows(table).items()} == {
        "a": "r1",
        "b": "r2",
        "c": "r2",
        "d": None,
    }
    assert len(sources) == 2
    state.merge(out, "m2")
    after = storage.list_files(out.uri)
    assert [f.uri.rsplit("/", 1)[-1] for f in after] == ["snapshot-m2.parquet"]
    assert not first.exists()
    assert rows(state.read(out)[0]).keys() == {"a", "b", "c", "d"}


def test_old_manifest_layout_is_migrated_once(tmp_path):
    out = storage.locate(str(tmp_path / "out"))
    old = [
        {"uri": "x", "etag": "20:2.0", "status": "ok", "mask_uri": "m/x.png", "time": 1.0},
        {"uri": "y", "etag": "5:1.5", "status": "error", "error": "empty", "time": 1.0},
        {"uri": "x", "etag": "20:2.0", "status": "skipped", "time": 2.0},  # not a finish
    ]
    manifest.write(out.child("_manifest/20250101T000000Z-aa.parquet"), manifest.to_table(old))
    manifest.write(
        out.child("_manifest/_parts/killed/p.parquet"),
        manifest.to_table([{"uri": "z", "etag": "1:1.0", "status": "ok", "time": 3.0}]),
    )
    state.merge(out, "new")
    table = rows(state.read(out)[0])
    assert {u: (r["status"], r["etag"]) for u, r in table.items()} == {
        "x": ("ok", "20:2"),  # the old etag in the new spelling: unchanged images stay done
        "y": ("error", "5:1.5"),
        "z": ("ok", "1:1"),
    }
    names = sorted(f.uri[len(out.path) + 1 :] for f in storage.list_files(out.uri))
    assert names == ["_runs/20250101T000000Z-aa.parquet", "_state/snapshot-new.parquet"]
