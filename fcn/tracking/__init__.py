"""MLflow, all of it: runs, metrics, dataset inputs, the model registry, models:/ URIs.

Every MLflow call of the project goes through this package; this module is its interface
(`from fcn import tracking; tracking.start_run(...)`), each name defined in the module that
does one job:
- source: where a run's code came from (entry point, git commit);
- runs: the client, the run lifecycle (`run_scope`), params, metrics, artifacts, UI links;
- reading: an experiment's runs, metric histories and class lists read back (compare);
- datasets: content digests of splits and the splits as dataset inputs;
- registry: model versions and the `champion` alias, the only code that touches either;
- history: every move of the alias, one MLflow run each: who was champion when, and why;
- lineage: what a registered version was made from (training run, datasets, commit);
- uris: models:/ and runs:/ URIs pinned, resolved to checkpoints, checked;
- pyfunc: the registered version as an MLflow pyfunc model (imported only when logged).

Importing the package imports neither MLflow nor torch (each function imports MLflow when
called): compare and the Ray-free jobs pay for neither until they talk to MLflow.
"""

from fcn.tracking.datasets import DATASET_CONTEXT, dataset_digest, log_split_inputs
from fcn.tracking.history import (
    HISTORY_EXPERIMENT,
    ChampionMove,
    champion_at,
    champion_history,
    promotion_of,
    retired_versions,
)
from fcn.tracking.lineage import DatasetRecord, VersionLineage, version_lineage
from fcn.tracking.reading import experiment_runs, metric_history, run_classes
from fcn.tracking.registry import (
    CHAMPION,
    MODEL_NAME,
    REGISTRY_VERSION,
    TAG_MEAN_IU,
    TAG_MODEL_NAME,
    TAG_MODEL_URI,
    TAG_MODEL_VERSION,
    TAG_VAL_DIGEST,
    TAG_WEIGHTS_FORMAT,
    TAG_WEIGHTS_SHA256,
    TAG_WEIGHTS_SOURCE,
    ChampionDecision,
    champion_mean_iu,
    champion_version,
    incomparable,
    model_tags,
    promote,
    register_checkpoint,
    register_imported,
    register_version,
    rollback,
    run_versions,
)
from fcn.tracking.runs import (
    CLASSES_FILE,
    TAG_FAILURE,
    TAG_STORAGE,
    RunLogger,
    client,
    end_run,
    failure_reason,
    log_classes,
    log_metrics,
    log_params,
    log_run,
    monitor_system,
    redact,
    run_scope,
    start_run,
    tracking_env,
    tracking_uri,
    ui_links,
)
from fcn.tracking.source import (
    GIT_COMMIT_ENV,
    TAG_GIT_COMMIT,
    TAG_SOURCE_NAME,
    TAG_SOURCE_TYPE,
    git_commit,
    source_tags,
)
from fcn.tracking.uris import (
    MLFLOW_SCHEMES,
    checked_model,
    is_mlflow_uri,
    link_model_input,
    pin_model_uri,
    resolve_checkpoint,
)

__all__ = [
    "HISTORY_EXPERIMENT",
    "ChampionMove",
    "DatasetRecord",
    "VersionLineage",
    "champion_at",
    "champion_history",
    "promotion_of",
    "retired_versions",
    "rollback",
    "version_lineage",
    "CHAMPION",
    "CLASSES_FILE",
    "DATASET_CONTEXT",
    "GIT_COMMIT_ENV",
    "MLFLOW_SCHEMES",
    "MODEL_NAME",
    "REGISTRY_VERSION",
    "TAG_FAILURE",
    "TAG_GIT_COMMIT",
    "TAG_MEAN_IU",
    "TAG_MODEL_NAME",
    "TAG_MODEL_URI",
    "TAG_MODEL_VERSION",
    "TAG_SOURCE_NAME",
    "TAG_SOURCE_TYPE",
    "TAG_STORAGE",
    "TAG_VAL_DIGEST",
    "TAG_WEIGHTS_FORMAT",
    "TAG_WEIGHTS_SHA256",
    "TAG_WEIGHTS_SOURCE",
    "ChampionDecision",
    "RunLogger",
    "champion_mean_iu",
    "champion_version",
    "checked_model",
    "client",
    "dataset_digest",
    "end_run",
    "experiment_runs",
    "failure_reason",
    "git_commit",
    "incomparable",
    "is_mlflow_uri",
    "link_model_input",
    "log_classes",
    "log_metrics",
    "log_params",
    "log_run",
    "log_split_inputs",
    "metric_history",
    "model_tags",
    "monitor_system",
    "pin_model_uri",
    "promote",
    "redact",
    "register_checkpoint",
    "register_imported",
    "register_version",
    "resolve_checkpoint",
    "run_classes",
    "run_scope",
    "run_versions",
    "source_tags",
    "start_run",
    "tracking_env",
    "tracking_uri",
    "ui_links",
]
