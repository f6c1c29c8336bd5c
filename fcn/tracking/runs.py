"""Runs: the client, the run lifecycle, params, metrics and artifacts, UI links.

Every call uses `MlflowClient` with an explicit run id, never the fluent "active run": the
run is created by the job's driver, metrics are logged by the rank-0 training worker (a
different process, maybe on another node) and the run is ended by the driver, FAILED when the
job fails. The run id is saved beside the checkpoints, so a resubmitted job continues it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tempfile
import time

from fcn.tracking.source import source_tags

TAG_STORAGE = "fcn.storage"  # ties a training run to its checkpoints
TAG_FAILURE = "failure_reason"  # one line on a FAILED run: why it failed
# The run's class list (ClassList.to_dict() as JSON) at the run's artifact root: compare's
# per-class plot takes names and colours from it.
CLASSES_FILE = "classes.json"
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")  # s3://KEY:SECRET@bucket -> s3://bucket
_MAX_PARAM = 6000  # MLflow's limit on a param value's length
_MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch request
_MAX_REASON = 500  # a failure reason is a line to read in the UI, not a log
_IMAGE_KEY = re.compile(r"[^a-zA-Z0-9_\-./ ]")  # what MLflow refuses in an image key


def client(tracking_uri: str | None = None):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def tracking_uri() -> str:
    """The tracking URI in force (MLFLOW_TRACKING_URI, else MLflow's local default), absolute.

    Handed to the training workers: their working directory differs from the driver's, so a
    relative `sqlite:///mlflow.db` would point them at another store.
    """
    import mlflow

    uri = mlflow.get_tracking_uri()
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            return prefix + os.path.abspath(uri[len(prefix) :])
    if "://" not in uri:  # a bare path is a file store
        return os.path.abspath(uri)
    return uri


def redact(value):
    """Strip credentials embedded in URIs (`s3://KEY:SECRET@bucket`) before logging."""
    return _USERINFO.sub("", value) if isinstance(value, str) else value


def tracking_env(uri: str) -> dict:
    """`MLFLOW_TRACKING_URI` for a worker's runtime environment, or nothing when the URI holds
    a password (`http://user:PASSWORD@host`): Ray logs runtime environments, so such a worker
    reads it from its node's environment (better: MLFLOW_TRACKING_USERNAME/PASSWORD there)."""
    return {} if _USERINFO.search(uri) else {"MLFLOW_TRACKING_URI": uri}


def _param_text(value) -> str:
    return str(redact(value))[:_MAX_PARAM]


def _experiment_id(mlflow_client, experiment: str) -> str:
    found = mlflow_client.get_experiment_by_name(experiment)
    return found.experiment_id if found else mlflow_client.create_experiment(experiment)


def start_run(
    experiment: str, run_name: str, run_id: str | None = None, tags=None, uri=None
) -> str:
    """Create a run tagged with its source (`source_tags`), or mark run `run_id` RUNNING
    again (a resumed job, its earlier failure reason dropped); returns its id."""
    mlflow_client = client(uri)
    if run_id is not None:
        run = mlflow_client.get_run(run_id)  # a clear error when the store lost it
        if TAG_FAILURE in run.data.tags:
            mlflow_client.delete_tag(run_id, TAG_FAILURE)
        mlflow_client.update_run(run_id, status="RUNNING")
        return run_id
    experiment_id = _experiment_id(mlflow_client, experiment)
    tags = {**source_tags(), **(tags or {})}
    return mlflow_client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id


def end_run(run_id: str, status: str = "FINISHED", uri=None, error=None) -> None:
    """FINISHED, FAILED or KILLED: a failed job must never leave its run RUNNING.

    A FAILED run gets tag `failure_reason` (`failure_reason(error)`); `error` defaults to
    the exception being handled, so `end_run(run_id, "FAILED")` in a `finally:` or `except:`
    block records why.
    """
    mlflow_client = client(uri)
    error = error or (sys.exc_info()[1] if status == "FAILED" else None)
    try:
        if error is not None:
            mlflow_client.set_tag(run_id, TAG_FAILURE, failure_reason(error))
    finally:
        mlflow_client.set_terminated(run_id, status=status)


@contextlib.contextmanager
def run_scope(experiment: str, run_name: str, run_id: str | None = None, tags=None, uri=None):
    """Start run `run_name` (or resume `run_id`) and always end it: FINISHED when the block
    ends, KILLED on KeyboardInterrupt/SystemExit (`ray job stop`), FAILED with its
    `failure_reason` on any other exception. Yields the run id.

        with tracking.run_scope(experiment, name, tags=tags, uri=uri) as run_id:
            ...
    """
    run_id = start_run(experiment, run_name, run_id, tags=tags, uri=uri)
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        end_run(run_id, status, uri)


def failure_reason(error: BaseException) -> str:
    """One line saying why a job failed, for a person reading the run in the UI.

    Ray Train raises a wrapper naming every worker's failure: the lowest rank's error is the
    reason. A message that carries a traceback (a worker's) gives its last line, which names
    the exception; a one-line message is prefixed with its exception's name. Credentials
    redacted, at most 500 characters.
    """
    failures = getattr(error, "worker_failures", None)  # ray.train.WorkerGroupError
    prefix = ""
    if failures:
        rank = min(failures)
        error, prefix = failures[rank], f"rank {rank}: "
    error = getattr(error, "controller_failure", None) or error  # ray.train.ControllerError
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1:
        text = lines[-1]
    else:
        text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return redact(prefix + text)[:_MAX_REASON]


def log_params(run_id: str, params: dict, uri=None) -> None:
    """Every setting as a param (credentials redacted; unset settings, None, are left out). On
    a resumed run, params already logged keep their first value (MLflow params are
    immutable) and changes become tags."""
    from mlflow.entities import Param

    mlflow_client = client(uri)
    logged = mlflow_client.get_run(run_id).data.params
    fresh, changed = [], {}
    for key, text in _param_texts(params).items():
        if key not in logged:
            fresh.append(Param(key, text))
        elif logged[key] != text:
            changed[f"resumed.{key}"] = text
    if fresh:
        mlflow_client.log_batch(run_id, params=fresh)
    for key, value in changed.items():
        mlflow_client.set_tag(run_id, key, value)


def _param_texts(params: dict) -> dict[str, str]:
    """Params as MLflow stores them: text, redacted, unset (None) settings left out (a param
    "None" reads as a value and clutters the UI's comparisons)."""
    return {k: _param_text(v) for k, v in params.items() if v is not None}


def _metrics(values: dict, step: int) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def _send_metrics(mlflow_client, run_id: str, metrics: list) -> None:
    for start in range(0, len(metrics), _MAX_BATCH):
        mlflow_client.log_batch(run_id, metrics=metrics[start : start + _MAX_BATCH])


def log_metrics(run_id: str, values: dict, step: int, uri=None) -> None:
    """One request, now. For a metric per training step use `RunLogger`."""
    _send_metrics(client(uri), run_id, _metrics(values, step))


def _log_bytes(mlflow_client, run_id: str, data: bytes, artifact_file: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, os.path.basename(artifact_file))
        with open(path, "wb") as f:
            f.write(data)
        mlflow_client.log_artifact(run_id, path, os.path.dirname(artifact_file) or None)


def log_classes(run_id: str, classes: dict, uri=None) -> None:
    """Record the run's class list (`ClassList.to_dict()`) as `classes.json` at its root."""
    _log_bytes(client(uri), run_id, json.dumps(classes).encode(), CLASSES_FILE)


class RunLogger:
    """Metrics of one run from one process, batched: one client, one `log_batch` per flush.

    Rank 0 of training logs `train_loss` every step; a request per step would put a network
    round trip (and, with a new client each time, a new connection) into every step. `log`
    buffers; the buffer is sent once `every_steps` distinct steps or `every_s` seconds have
    passed since the last send. Call `flush()` after an evaluation (its scores then show at
    once) and before the process ends; `log_image` sends at once (artifacts, no batching).
    """

    def __init__(self, run_id: str, tracking_uri: str | None = None, every_steps=20, every_s=30.0):
        self.run_id = run_id
        self.every_steps = every_steps
        self.every_s = every_s
        self._client = client(tracking_uri)
        self._pending: list = []
        self._steps: set[int] = set()
        self._last_send = time.monotonic()

    def log(self, values: dict, step: int) -> None:
        self._pending += _metrics(values, step)
        self._steps.add(step)
        waited = time.monotonic() - self._last_send
        if len(self._steps) >= self.every_steps or waited >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            _send_metrics(self._client, self.run_id, self._pending)
        self._pending, self._steps = [], set()
        self._last_send = time.monotonic()

    def log_image(self, image, key: str, step: int) -> None:
        """An RGB image (H x W x 3 uint8) as MLflow's image series `key` at `step`: the run's
        UI shows each key with a step slider. MLflow stores it as `images/<key>+step+<step>
        +timestamp+<ms>+<uuid>.png` (`/` in the key as `~`) plus a `+compressed.webp`
        thumbnail; characters it refuses in a key become `_`."""
        key = _IMAGE_KEY.sub("_", key)
        self._client.log_image(self.run_id, image, key=key, step=step, synchronous=True)


def log_run(
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict,
    metrics: dict,
    artifacts: dict[str, bytes] | None = None,
    uri: str | None = None,
) -> str:
    """A whole finished run in one call (a segment job's summary, a comparison): params
    (as `log_params`), tags (with `source_tags`), metrics at step 0 and `artifacts` (artifact
    path -> bytes). Returns the run id; the run ends FAILED if logging fails half-way."""
    from mlflow.entities import Param, RunTag

    mlflow_client = client(uri)
    with run_scope(experiment, run_name, uri=uri) as run_id:
        mlflow_client.log_batch(
            run_id,
            params=[Param(k, v) for k, v in _param_texts(params).items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        _send_metrics(mlflow_client, run_id, _metrics(metrics, 0))
        for path, data in (artifacts or {}).items():
            _log_bytes(mlflow_client, run_id, data, path)
    return run_id


def monitor_system(run_id: str, tracking_uri: str | None = None, node: str | None = None):
    """Start MLflow's system metrics for run `run_id` from this process: CPU, memory, disk and
    network of this machine, and its GPUs when `nvidia-ml-py` is installed, as metrics
    `system/...` (`system/<node>/...` when `node` is given: a run over several machines).

    A daemon thread samples every 10 s (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL) and stops by
    itself once the run is no longer RUNNING; `finish()` on the returned monitor sends what it
    holds and stops it. A restarted worker continues the steps (`resume_logging`).
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        run_id, node_id=node, tracking_uri=tracking_uri, resume_logging=True
    )
    monitor.start()
    return monitor


def ui_links(uri: str, run_id: str, model: str | None = None, version=None) -> list[str]:
    """The MLflow UI's pages of the run (and model version) when `uri` is a tracking server;
    for a local store, the command that serves the UI."""
    if not uri.startswith(("http://", "https://")):
        # No address of our own: `mlflow ui` prints the one it listens on (its --host/--port).
        return [f"MLflow UI: mlflow ui --backend-store-uri {uri}  (then open the URL it prints)"]
    server = redact(uri).rstrip("/")
    experiment = client(uri).get_run(run_id).info.experiment_id
    links = [f"MLflow run: {server}/#/experiments/{experiment}/runs/{run_id}"]
    if model and version:
        links.append(f"MLflow model version: {server}/#/models/{model}/versions/{version}")
    return links
