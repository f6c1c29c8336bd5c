"""The segment job's file formats stay what readers rely on (docs/nightly.md,
ARCHITECTURE.md): column names, order and types of the state and the manifest, the status
strings, and no test-only switch in the product."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fcn import storage
from fcn.nightly import manifest, schema, state
from fcn.nightly.schema import Status

FCN = Path(__file__).resolve().parents[2] / "fcn"


def test_state_and_manifest_columns_are_the_published_ones():
    assert schema.STATE.names == [
        "uri", "etag", "mask_uri", "status", "error", "model", "run_id", "time"
    ]  # fmt: skip
    assert schema.MANIFEST.names[:6] == ["uri", "mask_uri", "status", "error", "model", "seconds"]
    assert schema.MANIFEST.names[-2:] == ["run_id", "time"]
    for name in set(schema.STATE.names) & set(schema.MANIFEST.names):  # one type per column
        assert schema.STATE.field(name).type == schema.MANIFEST.field(name).type, name
    assert schema.MANIFEST.field("class_counts").type == pa.list_(pa.int64())


def test_status_values_are_plain_strings_in_files(tmp_path):
    assert [str(s) for s in Status] == ["ok", "error", "skipped"]
    out = storage.locate(str(tmp_path))
    table = manifest.to_table([{"uri": "a", "status": Status.OK, "time": 1.0}])
    manifest.write(state.run_manifest(out, "r"), table)
    read = pq.read_table(state.run_manifest(out, "r").path)
    assert read.column("status").to_pylist() == ["ok"] and read.schema == schema.MANIFEST
    assert json.dumps({"status": Status.ERROR}) == '{"status": "error"}'


def test_the_product_reads_no_test_only_environment_variable():
    """Tests reach into the job from outside (tests/integration/segment_dies_in_merge.py), never
    through a switch the product reads (it used to read FCN_TEST_HALT_IN_MERGE)."""
    found = [str(p) for p in FCN.rglob("*.py") if "FCN_TEST" in p.read_text()]
    assert found == []
