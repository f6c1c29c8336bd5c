"""Reading runs back (compare): an experiment's runs, metric histories, class lists."""

from __future__ import annotations

import json
import tempfile

from fcn.tracking.runs import CLASSES_FILE, client


def experiment_runs(experiment: str, uri=None) -> list:
    """Every run of `experiment`, oldest first; a LookupError naming the experiments there
    when it does not exist."""
    mlflow_client = client(uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in mlflow_client.search_experiments())
        raise LookupError(
            f"no MLflow experiment named {experiment!r} at {mlflow_client.tracking_uri}; "
            f"experiments there: {', '.join(names) or 'none'}"
        )
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs(
            [found.experiment_id], max_results=1000, page_token=token, order_by=["start_time ASC"]
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def metric_history(run_id: str, key: str, uri=None) -> list[tuple[int, float]]:
    """(step, value) of every logged value of `key`, by step."""
    return sorted((m.step, m.value) for m in client(uri).get_metric_history(run_id, key))


def run_classes(run_id: str, uri=None) -> dict | None:
    """The class list the run recorded (`classes.json`, see `log_classes`), or None."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="fcn-classes-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=CLASSES_FILE, dst_path=tmp, tracking_uri=uri
            )
        except (OSError, mlflow.exceptions.MlflowException):
            return None  # a run from before class lists were recorded
        with open(path) as f:
            return json.load(f)
