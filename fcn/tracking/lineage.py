"""What a registered version was made from: its training run, the datasets that run read
(context, digest, URI: its MLflow dataset inputs), the commit of the code, its mean IU."""

from __future__ import annotations

import json
from dataclasses import dataclass

from fcn.tracking.datasets import DATASET_CONTEXT
from fcn.tracking.runs import client
from fcn.tracking.source import TAG_GIT_COMMIT


@dataclass(frozen=True)
class DatasetRecord:
    context: str  # `train`, `val` (the input's mlflow.data.context)
    name: str
    digest: str
    uri: str | None  # the split's URI, as the run logged it


@dataclass(frozen=True)
class VersionLineage:
    model_name: str
    version: str
    run_id: str | None  # the run that registered it (training, or an import)
    run_name: str | None
    experiment: str | None
    mean_iu: float | None
    val_digest: str | None
    train_digest: str | None
    git_commit: str | None  # the run's source commit, else the version's tag
    weights_source: str | None  # an imported version: where its weights came from
    datasets: tuple[DatasetRecord, ...]


def version_lineage(model_name: str, version, uri=None) -> VersionLineage:
    """The lineage of `model_name` version `version` (an MlflowException when unknown)."""
    mlflow_client = client(uri)
    found = mlflow_client.get_model_version(model_name, str(version))
    tags = found.tags
    run = mlflow_client.get_run(found.run_id) if found.run_id else None
    run_tags = run.data.tags if run else {}
    experiment = None
    if run is not None:
        experiment = mlflow_client.get_experiment(run.info.experiment_id).name
    mean_iu = tags.get("mean_iu")
    return VersionLineage(
        model_name=model_name,
        version=str(found.version),
        run_id=found.run_id or None,
        run_name=run.info.run_name if run else None,
        experiment=experiment,
        mean_iu=float(mean_iu) if mean_iu is not None else None,
        val_digest=tags.get("val_digest") or run_tags.get("val_digest"),
        train_digest=tags.get("train_digest") or run_tags.get("train_digest"),
        git_commit=run_tags.get(TAG_GIT_COMMIT) or tags.get("git_commit"),
        weights_source=tags.get("fcn.source"),
        datasets=_datasets(run) if run else (),
    )


def _datasets(run) -> tuple[DatasetRecord, ...]:
    found = []
    for item in run.inputs.dataset_inputs if run.inputs else ():
        context = next((t.value for t in item.tags if t.key == DATASET_CONTEXT), "")
        dataset = item.dataset
        found.append(DatasetRecord(context, dataset.name, dataset.digest, _uri(dataset.source)))
    return tuple(found)


def _uri(source: str) -> str | None:
    """The URI in a dataset source's JSON (`{"uri": ...}`), else the text itself."""
    try:
        parsed = json.loads(source)
    except (TypeError, ValueError):
        return source or None
    if isinstance(parsed, dict):
        return parsed.get("uri") or parsed.get("path") or None
    return source
