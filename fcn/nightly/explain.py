"""Explain a mask: which image and image version it was made from, on which night, by which
model version, trained on which data from which commit, and why that version was champion.

The nightly state (fcn.nightly.state) says what made a mask: its row (`uri`, `etag`,
`mask_uri`, `model`, `run_id`, `time`) under the output the mask lies in, found by walking up
from the mask to the nearest folder holding `_state/` (or `_runs/`, or the old `_manifest/`)
that names it; a mask the state has since replaced by an error row is found in the run
manifests. MLflow says the rest: the version's lineage (fcn.tracking.lineage) and the
champion history's move that made it champion (fcn.tracking.history).
"""

from __future__ import annotations

import io
import posixpath
import time
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fcn import storage, tracking
from fcn.config import ExplainConfig
from fcn.nightly import schema, state
from fcn.nightly.schema import Status
from fcn.storage import Location

MARKERS = (state.STATE, state.RUNS, state.LEGACY)  # a folder holding one is a segment output


class NotOurMask(ValueError):
    """The mask is not one the segment job wrote (no state or manifest names it)."""


@dataclass(frozen=True)
class NightRecord:
    run_id: str  # the segment run (`<UTC start>-<hex>`)
    time: float  # when the mask's batch finished, seconds since the epoch
    manifest: str  # the run's manifest (`_runs/<run id>.parquet`)
    mlflow_run_id: str | None  # the run's MLflow run (`segment-<run id>`), when logged


@dataclass(frozen=True)
class Explanation:
    mask: str
    output: str  # the segment job's --output the mask lies under
    image: str  # the source image
    etag: str | None  # the image version it was made from (`size:mtime`, `sha256:...`)
    night: NightRecord
    model: str  # the exact model (`models:/name/7`, or a checkpoint URI)
    lineage: tracking.VersionLineage | None  # None: the model is no registry version
    promotion: tracking.ChampionMove | None  # the move that made it champion, if recorded

    def to_dict(self) -> dict:
        return asdict(self)


def explain(config: ExplainConfig) -> Explanation:
    """The explanation of `config.mask`; NotOurMask when no segment output names it."""
    config.validate()
    where = storage.locate(storage.absolute(config.mask))
    output, row = find(where)
    model = row["model"]
    night = NightRecord(
        row["run_id"], row["time"], state.run_manifest(output, row["run_id"]).uri, None
    )
    match = tracking.REGISTRY_VERSION.fullmatch(model or "")
    if not match:
        return Explanation(where.uri, output.uri, row["uri"], row["etag"], night, model,
                           None, None)  # fmt: skip
    uri = config.tracking_uri
    night = NightRecord(night.run_id, night.time, night.manifest, _mlflow_run(night.run_id, uri))
    lineage = tracking.version_lineage(match[1], match[2], uri)
    promotion = tracking.promotion_of(match[1], match[2], row["time"], uri)
    return Explanation(where.uri, output.uri, row["uri"], row["etag"], night, model, lineage,
                       promotion)  # fmt: skip


def find(mask: Location) -> tuple[Location, dict]:
    """(the output holding `mask`, the latest `ok` row that wrote it), walking up from it."""
    if not mask.path.lower().endswith(".png"):
        raise NotOurMask(f"{mask.uri} is not a mask: the segment job writes .png masks")
    folder = posixpath.dirname(mask.path)
    while folder and folder not in ("/", "."):
        output = Location(mask.fs, folder, mask.scheme)
        key = mask.path[len(folder) + 1 :]
        if not key.startswith("_") and "/_" not in key and _is_output(output):
            row = _row(output, mask.uri)
            if row is not None:
                return output, row
        folder = posixpath.dirname(folder)
    raise NotOurMask(
        f"{mask.uri} is not a mask the segment job wrote: no segment output above it (a "
        "folder with _state/ or _runs/) names it"
    )


def _is_output(output: Location) -> bool:
    return any(output.fs.exists(f"{output.path}/{marker}") for marker in MARKERS)


def _row(output: Location, mask_uri: str) -> dict | None:
    """The state's row that wrote `mask_uri`; else the latest ok row of a run manifest."""
    table, _ = state.read(output)
    found = _latest_ok(table, mask_uri)
    return found if found is not None else _from_manifests(output, mask_uri)


def _latest_ok(table: pa.Table, mask_uri: str) -> dict | None:
    if "mask_uri" not in table.column_names or not table.num_rows:
        return None
    ok = pc.and_(pc.fill_null(pc.equal(table.column("mask_uri"), mask_uri), False),
                 schema.where(table, Status.OK))  # fmt: skip
    rows = table.filter(ok).sort_by([("time", "descending")]).to_pylist()
    return rows[0] if rows else None


def _from_manifests(output: Location, mask_uri: str) -> dict | None:
    """A mask the state no longer names as ok (its image failed since): the run manifests."""
    columns = list(schema.STATE.names)
    tables = []
    for folder in (state.RUNS, state.LEGACY):
        for chunk in output.child(folder).walk((".parquet",)):
            for path in chunk.column("path").to_pylist():
                table = pq.read_table(io.BytesIO(output.fs.cat_file(path)))
                tables.append(schema.conform(table, schema.STATE).select(columns))
    return _latest_ok(pa.concat_tables(tables), mask_uri) if tables else None


def _mlflow_run(run_id: str, uri=None) -> str | None:
    """The MLflow run the night logged (`segment-<run id>`, in whichever experiment)."""
    mlflow_client = tracking.client(uri)
    experiments = [e.experiment_id for e in mlflow_client.search_experiments()]
    if not experiments:
        return None
    found = mlflow_client.search_runs(
        experiments, f"attributes.run_name = 'segment-{run_id}'", max_results=1
    )
    return found[0].info.run_id if found else None


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def to_lines(found: Explanation) -> list[str]:
    """The explanation as lines for a person."""
    night = found.night
    lines = [
        f"mask:       {found.mask}",
        f"image:      {found.image}  (etag {found.etag})",
        f"night:      run {night.run_id}, mask written {_when(night.time)}",
        f"manifest:   {night.manifest}",
        f"model:      {found.model}",
    ]
    if night.mlflow_run_id:
        lines.insert(3, f"            MLflow run {night.mlflow_run_id}")
    lineage = found.lineage
    if lineage is None:
        return [*lines, "lineage:    none (the model is a checkpoint, not a registry version)"]
    lines += [
        f"training:   run {lineage.run_id} ({lineage.run_name}, experiment "
        f"{lineage.experiment}), mean IU {lineage.mean_iu}",
        f"commit:     {lineage.git_commit or 'unrecorded'}",
        f"train data: digest {lineage.train_digest or 'unrecorded'}",
        f"val data:   digest {lineage.val_digest or 'unrecorded'}",
    ]
    lines += [f"  {d.context}: {d.uri} (digest {d.digest})" for d in lineage.datasets]
    if lineage.weights_source:
        lines.append(f"weights:    imported from {lineage.weights_source}")
    move = found.promotion
    if move is None:
        return [*lines, "champion:   no recorded move made this version champion before the mask"]
    forced = f"; forced over: {move.overridden}" if move.forced else ""
    return [
        *lines,
        f"champion:   since {_when(move.time)}, {move.from_version or 'none'} -> "
        f"{move.to_version} by {move.job}: {move.reason}{forced}",
        f"            mean IU {move.from_mean_iu} -> {move.to_mean_iu} on val data "
        f"{move.val_digest}; record: run {move.record_run_id}",
    ]
