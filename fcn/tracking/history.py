"""The champion history: every move of a registered model's `champion` alias, kept in MLflow.

MLflow keeps where an alias points, not where it pointed. So each move `registry.promote`
makes is one run of the experiment `champion-history` (HISTORY_EXPERIMENT), made around the
move: the run starts, the alias moves, the run ends FINISHED (a move that fails ends it
FAILED, and only FINISHED runs are history). A run per move, not a tag appended on the
registered model: a run has no size limit to outgrow (MLflow caps a tag value at a few
thousand characters), is time-stamped by the tracking store, survives a server restart with
the backend store, and is read with the plain MLflow API or the UI's run table, filtered by
`tags.model_name`. Its tags say what moved and why; its metrics carry both mean IUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from fcn.tracking.runs import client, redact, run_scope

HISTORY_EXPERIMENT = "champion-history"
_MAX_REASON = 5000  # MLflow caps a run tag value at 8000 characters
# The tags and metrics of a move's run (the names a reader of plain MLflow filters on).
TAG_NAME, TAG_FROM, TAG_TO = "model_name", "from_version", "to_version"
TAG_REASON, TAG_JOB, TAG_FORCED, TAG_OVERRIDDEN = "reason", "job", "forced", "overridden"
TAG_VAL, TAG_FROM_VAL, TAG_SOURCE_RUN = "val_digest", "from_val_digest", "source_run_id"
METRIC_FROM, METRIC_TO = "from_mean_iu", "to_mean_iu"
# Who moves the alias (tag `job`).
JOB_TRAIN, JOB_PROMOTE, JOB_IMPORT, JOB_ROLLBACK = (
    "train", "compare --promote", "import_model --champion", "compare --rollback",
)  # fmt: skip


@dataclass(frozen=True)
class ChampionMove:
    """One move of the alias: from which version to which, when, why, by which job."""

    model_name: str
    time: float  # seconds since the epoch, when the move's run started
    from_version: str | None  # None: there was no champion
    to_version: str
    reason: str
    job: str  # JOB_*
    from_mean_iu: float | None  # as the versions' `mean_iu` tags recorded them
    to_mean_iu: float | None
    val_digest: str | None  # the validation data the new champion was scored on
    from_val_digest: str | None  # the old champion's (differs only in a forced move)
    forced: bool  # the champion rule refused it and --force overrode the refusal
    overridden: str | None  # the refusal a forced move overrode
    source_run_id: str | None  # the run of the job that moved it (training, import), if any
    record_run_id: str  # this move's run in HISTORY_EXPERIMENT


def recorded(
    model_name: str,
    candidate,
    champion,
    reason: str,
    job: str,
    move,
    overridden: str | None = None,
    source_run_id: str | None = None,
    uri=None,
) -> str:
    """Call `move()` (the alias move) inside a new run recording it; returns the run id.
    `candidate`, `champion`: the ModelVersions to and from (None: no champion)."""
    tags = {TAG_NAME: model_name, TAG_TO: str(candidate.version), TAG_JOB: job,
            TAG_REASON: str(redact(reason))[:_MAX_REASON],
            TAG_FORCED: str(overridden is not None).lower()}  # fmt: skip
    metrics = {}
    if candidate.tags.get("mean_iu") is not None:
        metrics[METRIC_TO] = float(candidate.tags["mean_iu"])
    if candidate.tags.get(TAG_VAL):
        tags[TAG_VAL] = candidate.tags[TAG_VAL]
    if champion is not None:
        tags[TAG_FROM] = str(champion.version)
        if champion.tags.get(TAG_VAL):
            tags[TAG_FROM_VAL] = champion.tags[TAG_VAL]
        if champion.tags.get("mean_iu") is not None:
            metrics[METRIC_FROM] = float(champion.tags["mean_iu"])
    if overridden:
        tags[TAG_OVERRIDDEN] = overridden[:_MAX_REASON]
    if source_run_id:
        tags[TAG_SOURCE_RUN] = source_run_id
    name = f"{model_name}: {tags.get(TAG_FROM, '-')} -> {tags[TAG_TO]}"
    mlflow_client = client(uri)
    with run_scope(HISTORY_EXPERIMENT, name, tags=tags, uri=uri) as run_id:
        for key, value in metrics.items():
            mlflow_client.log_metric(run_id, key, value)
        move()
    return run_id


def champion_history(model_name: str, uri=None) -> list[ChampionMove]:
    """Every recorded move of `model_name`'s champion alias, oldest first."""
    mlflow_client = client(uri)
    experiment = mlflow_client.get_experiment_by_name(HISTORY_EXPERIMENT)
    if experiment is None:
        return []
    quoted = model_name.replace("'", "\\'")
    query = f"tags.{TAG_NAME} = '{quoted}' and attributes.status = 'FINISHED'"
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [experiment.experiment_id], query, max_results=1000, page_token=token,
            order_by=["attributes.start_time ASC"],
        )  # fmt: skip
        runs += list(page)
        token = page.token
        if not token:
            return [_move(run) for run in runs]


def _move(run) -> ChampionMove:
    tags, metrics = run.data.tags, run.data.metrics
    return ChampionMove(
        model_name=tags[TAG_NAME],
        time=run.info.start_time / 1000,
        from_version=tags.get(TAG_FROM),
        to_version=tags[TAG_TO],
        reason=tags.get(TAG_REASON, ""),
        job=tags.get(TAG_JOB, ""),
        from_mean_iu=metrics.get(METRIC_FROM),
        to_mean_iu=metrics.get(METRIC_TO),
        val_digest=tags.get(TAG_VAL),
        from_val_digest=tags.get(TAG_FROM_VAL),
        forced=tags.get(TAG_FORCED) == "true",
        overridden=tags.get(TAG_OVERRIDDEN),
        source_run_id=tags.get(TAG_SOURCE_RUN),
        record_run_id=run.info.run_id,
    )


def champion_at(model_name: str, when: float, uri=None) -> ChampionMove | None:
    """The move that made the champion of time `when` (seconds since the epoch): its
    `to_version` was the champion then. None before the first recorded move."""
    earlier = [m for m in champion_history(model_name, uri) if m.time <= when]
    return earlier[-1] if earlier else None


def promotion_of(model_name: str, version: str, when: float, uri=None) -> ChampionMove | None:
    """The latest recorded move that made `version` champion at or before `when`."""
    moves = champion_history(model_name, uri)
    found = [m for m in moves if m.to_version == str(version) and m.time <= when]
    return found[-1] if found else None


def retired_versions(model_name: str, uri=None) -> frozenset[str]:
    """Versions a rollback moved the champion away from: their masks are suspect, whatever
    their number (the nightly model-change option redoes them, docs/nightly.md)."""
    moves = champion_history(model_name, uri)
    return frozenset(m.from_version for m in moves if m.job == JOB_ROLLBACK and m.from_version)
