"""MLflow, all of it: runs, metrics, dataset inputs, the model registry, models:/ URIs.

Every MLflow call of the project goes through this module. It uses `MlflowClient` with an
explicit run id, never the fluent "active run": the run is created by the job's driver,
metrics are logged by the rank-0 training worker (a different process, maybe on another
node) and the run is ended by the driver, FAILED when the job fails. The run id is saved
beside the checkpoints, so a resubmitted job continues it.

Importing this module imports neither MLflow nor torch (each function imports MLflow when
called): compare and the Ray-free jobs pay for neither until they talk to MLflow.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings

log = logging.getLogger(__name__)

CHAMPION = "champion"
# Tags that tie a run to its checkpoints and a model version to its score and data.
TAG_STORAGE = "fcn.storage"
TAG_MEAN_IU = "mean_iu"
# Content digest of the split a version was validated on (run tag and version tag): mean IUs
# are comparable only between equal digests, so the champion moves only between those.
TAG_VAL_DIGEST = "val_digest"
DATASET_CONTEXT = "mlflow.data.context"  # MLflow's input tag naming a dataset's role
# MLflow's own run tags for where a run's code came from (the UI shows them as its source).
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_SOURCE_NAME = "mlflow.source.name"
TAG_SOURCE_TYPE = "mlflow.source.type"
TAG_FAILURE = "failure_reason"  # one line on a FAILED run: why it failed
GIT_COMMIT_ENV = "FCN_GIT_COMMIT"  # the commit, for code that runs outside a checkout
# An evaluation run's model: the exact registry version (or the URI of a checkpoint).
TAG_MODEL_URI = "model_uri"
TAG_MODEL_NAME = "model_name"
TAG_MODEL_VERSION = "model_version"
# The run's class list (ClassList.to_dict() as JSON) at the run's artifact root: compare's
# per-class plot takes names and colours from it.
CLASSES_FILE = "classes.json"
MODEL_NAME = "fcn"  # the logged model's name within its run
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")  # s3://KEY:SECRET@bucket -> s3://bucket
_MAX_PARAM = 6000  # MLflow's limit on a param value's length
_MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch request
_MAX_REASON = 500  # a failure reason is a line to read in the UI, not a log
_IMAGE_KEY = re.compile(r"[^a-zA-Z0-9_\-./ ]")  # what MLflow refuses in an image key
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
# A pinned registry version, `models:/NAME/VERSION` (what `pin_model_uri` gives).
REGISTRY_VERSION = re.compile(r"models:/([^/@]+)/(\d+)")


def is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(MLFLOW_SCHEMES)


def resolve_checkpoint(uri: str, download_dir: str | None = None) -> str:
    """A checkpoint directory URI for `uri`: MLflow URIs are downloaded, others pass through.

    A registered version is an MLflow pyfunc model whose artifact `checkpoint/` is the
    checkpoint directory (fcn.serving), or, for versions registered before that, the bare
    checkpoint directory; both hold state_dict + config.json (no pickled module), found here
    by walking the download.
    """
    if not is_mlflow_uri(uri):
        return uri
    import mlflow

    from fcn.engine import checkpoint  # here: it imports torch, and only this function needs it

    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=download_dir or tempfile.mkdtemp(prefix="fcn-model-")
    )
    for root, _dirs, files in sorted(os.walk(local)):
        if checkpoint.CONFIG_FILE in files and checkpoint.MODEL_FILE in files:
            return root
    raise FileNotFoundError(
        f"{uri!r} holds no checkpoint ({checkpoint.MODEL_FILE} + {checkpoint.CONFIG_FILE})"
    )


def pin_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """`models:/name@alias` -> `models:/name/<version>`: every actor loads the same version
    even if the alias moves mid-run, and a manifest names the exact version."""
    match = re.fullmatch(r"models:/([^/@]+)@([^/]+)", uri)
    if not match:
        return uri
    version = client(tracking_uri).get_model_version_by_alias(match[1], match[2]).version
    return f"models:/{match[1]}/{version}"


# --- run lifecycle ---------------------------------------------------------------------------


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


@functools.lru_cache(maxsize=1)
def source_tags() -> dict:
    """MLflow's source tags for a run of this process: the entry point (`jobs/train.py`,
    relative to the checkout) and the git commit when known (`git_commit`)."""
    script = sys.argv[0] if sys.argv else ""
    entry = os.path.abspath(script) if script not in ("", "-c") else "python"
    if entry.startswith(_REPO + os.sep):
        entry = os.path.relpath(entry, _REPO)
    tags = {TAG_SOURCE_NAME: entry, TAG_SOURCE_TYPE: "JOB"}
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


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


# --- reading runs (compare) ------------------------------------------------------------------


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


# --- datasets --------------------------------------------------------------------------------


def dataset_digest(split_uri: str, limit: int | None = None) -> str:
    """Content digest of a split's Parquet files (`<root>/<split>/`, local or s3://).

    sha256 over each file's key below `split_uri` and its bytes, files in key order: the same
    data under another root has the same digest; any changed byte or renamed shard changes
    it. `limit` (the first N rows scored, `--val-limit`) is part of the digest: a subset is
    other data than the whole split.
    """
    from fcn import storage

    files = storage.list_files(split_uri, (".parquet",))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {split_uri!r}")
    digest = hashlib.sha256()
    for info in files:
        digest.update(storage.relative_key(split_uri, info.uri).encode() + b"\0")
        fs, path = storage.filesystem(info.uri)
        with fs.open(path, "rb") as f:
            while chunk := f.read(1 << 23):
                digest.update(chunk)
    if limit is not None:
        digest.update(f"\0limit={limit}".encode())
    return digest.hexdigest()[:32]  # MLflow stores at most 36 characters


def log_split_inputs(
    run_id: str,
    splits: dict[str, str | list[str]],
    limits: dict[str, int | None] | None = None,
    uri=None,
) -> dict[str, str]:
    """Log each split as an MLflow dataset input of the run; returns context -> digest.

    `splits`: context -> split URI, e.g. {"train": "s3://b/voc/train", "val": "s3://b/voc/val"}
    (the context becomes the input's `mlflow.data.context`), or a list of split URIs used
    together (each an input with that context; the digest is then over their digests, in
    order); `limits`: context -> rows used. Each digest is also the run tag `<context>_digest`
    (`val_digest` for "val"), which registration copies onto the model version.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs, digests = [], {}
    for context, value in splits.items():
        limit = (limits or {}).get(context)
        parts = []
        for split_uri in [value] if isinstance(value, str) else value:
            parts.append(dataset_digest(split_uri, limit))
            clean = redact(split_uri)
            with warnings.catch_warnings():  # a local path matches two equivalent local sources
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(clean)
            name = clean.rstrip("/").rsplit("/", 1)[-1] + (f"[:{limit}]" if limit else "")
            dataset = MetaDataset(source, name=name, digest=parts[-1])
            tag = InputTag(DATASET_CONTEXT, context)
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[tag]))
        joined = hashlib.sha256(" ".join(parts).encode()).hexdigest()[:32]
        digests[context] = parts[0] if len(parts) == 1 else joined
    mlflow_client = client(uri)
    mlflow_client.log_inputs(run_id, datasets=inputs)
    for context, digest in digests.items():
        mlflow_client.set_tag(run_id, f"{context}_digest", digest)
    return digests


# --- model registry --------------------------------------------------------------------------


def register_checkpoint(
    run_id: str, local_dir: str, model_name: str, mean_iu: float, uri=None
) -> tuple[str, bool]:
    """Log checkpoint dir `local_dir` as the run's MLflow pyfunc model (fcn.serving), register
    it as a version of `model_name`, and move alias `champion` to it only when it beats the
    champion on the same validation data (see `incomparable`).

    The version's tags say what it is: mean IU, val and train digests (the run's tags), model,
    width, num_classes, classes, git commit. A run registers at most one version (a resumed,
    finished job does not add another). Returns (version, is_champion).
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client(uri)
    try:
        mlflow_client.get_registered_model(model_name)
    except MlflowException:
        mlflow_client.create_registered_model(model_name)
    existing = mlflow_client.search_model_versions(f"name='{model_name}' and run_id='{run_id}'")
    if existing:
        version = str(max(int(v.version) for v in existing))
    else:
        model_id = _log_pyfunc(mlflow_client, run_id, local_dir)
        version = mlflow_client.create_model_version(
            model_name, source=f"models:/{model_id}", run_id=run_id, model_id=model_id
        ).version
    run_tags = mlflow_client.get_run(run_id).data.tags
    tags = {**_version_tags(local_dir, run_tags), TAG_MEAN_IU: f"{mean_iu:.6f}"}
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(model_name, version, key, value)
    candidate = mlflow_client.get_model_version(model_name, version)
    champion = champion_version(model_name, uri)
    if champion is not None and str(champion.version) == str(version):
        return str(version), True
    refusal = incomparable(candidate, champion)
    if refusal:
        log.warning("%s: %s", model_name, refusal)
        return str(version), False
    if champion is not None and _mean_iu(candidate) <= _mean_iu(champion):
        return str(version), False
    mlflow_client.set_registered_model_alias(model_name, CHAMPION, version)
    return str(version), True


def _log_pyfunc(mlflow_client, run_id: str, local_dir: str) -> str:
    """The checkpoint as an MLflow 3 logged model of run `run_id`; returns its model id."""
    from mlflow.entities import LoggedModelOutput

    from fcn.tracking import pyfunc as serving  # here: it imports MLflow's pyfunc and torch

    experiment_id = mlflow_client.get_run(run_id).info.experiment_id
    model = mlflow_client.create_logged_model(experiment_id, MODEL_NAME, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="fcn-pyfunc-") as tmp:
            path = os.path.join(tmp, "model")
            serving.save(local_dir, path)
            mlflow_client.log_model_artifacts(model.model_id, path)
    except BaseException:
        mlflow_client.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow_client.finalize_logged_model(model.model_id, "READY")
    mlflow_client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def _version_tags(local_dir: str, run_tags: dict) -> dict:
    """What a reader of the registry needs to know about a version, from its config.json and
    its run: model, width, classes, val data, code."""
    from fcn.engine import checkpoint

    config = checkpoint.load_config(local_dir)
    tags = {
        "model": config.model,
        "width": str(1 if config.width is None else config.width),
        "num_classes": str(config.num_classes),
        "classes": _param_text(",".join(config.classes.names)),
        TAG_VAL_DIGEST: run_tags.get(TAG_VAL_DIGEST, ""),
        "train_digest": run_tags.get("train_digest", ""),
        # The code that trained it (the run's source tag), else the code registering it.
        "git_commit": run_tags.get(TAG_GIT_COMMIT) or git_commit() or "",
    }
    return {k: v for k, v in tags.items() if v}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this code runs from; else `FCN_GIT_COMMIT` from the
    environment, else None.

    `ray job submit --working-dir .` leaves `.git` out of what it uploads (Ray's default
    excludes), so a job there finds no checkout: its submitter passes the commit along, e.g.
    `--runtime-env-json '{"env_vars": {"FCN_GIT_COMMIT": "'$(git rev-parse HEAD)'"}}'`.
    """
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0:
        return done.stdout.strip()
    return os.environ.get(GIT_COMMIT_ENV) or None


def incomparable(candidate, champion) -> str | None:
    """Why `candidate` (a ModelVersion) cannot be ranked against `champion`, or None.

    Mean IUs are comparable only on the same validation data: versions compare when their
    `val_digest` tags are equal (versions registered before digests were recorded have none,
    and compare only among themselves).
    """
    if champion is None:
        return None
    mine, theirs = candidate.tags.get(TAG_VAL_DIGEST), champion.tags.get(TAG_VAL_DIGEST)
    if mine == theirs:
        return None
    return (
        f"version {candidate.version} was validated on val data {mine or 'unrecorded'}, "
        f"champion version {champion.version} on {theirs or 'unrecorded'}: mean IUs on "
        "different validation data are not comparable, so the champion stays (set the alias "
        "by hand if the new validation data replaces the old)"
    )


def _mean_iu(version) -> float:
    score = version.tags.get(TAG_MEAN_IU)
    return float(score) if score is not None else float("-inf")


def champion_version(model_name: str, uri=None):
    """The ModelVersion the champion alias points at, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client(uri).get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def champion_mean_iu(model_name: str, uri=None) -> tuple[str, float] | None:
    """(version, mean IU) of the current champion, or None when there is none."""
    version = champion_version(model_name, uri)
    return None if version is None else (str(version.version), _mean_iu(version))


def run_versions(run_id: str, uri=None) -> list:
    """The model versions registered from run `run_id`, in any registered model."""
    return list(client(uri).search_model_versions(f"run_id = '{run_id}'"))


def set_champion(model_name: str, version: str, uri=None) -> None:
    client(uri).set_registered_model_alias(model_name, CHAMPION, version)


def model_tags(model_uri: str) -> dict:
    """Run tags naming the model a run used: `model_uri`, and for a registry version
    (`models:/NAME/VERSION`, as `pin_model_uri` gives) `model_name` and `model_version`."""
    tags = {TAG_MODEL_URI: redact(model_uri)}
    match = REGISTRY_VERSION.fullmatch(model_uri)
    if match:
        tags[TAG_MODEL_NAME], tags[TAG_MODEL_VERSION] = match[1], match[2]
    return tags


def link_model_input(run_id: str, model_uri: str, uri=None) -> None:
    """Record a registry version's MLflow model as an input of run `run_id` (an evaluation):
    the UI lists the run under the model. Versions registered as a bare checkpoint
    directory have no MLflow model; their run keeps the `model_tags` alone."""
    from mlflow.entities import LoggedModelInput

    tags = model_tags(model_uri)
    if TAG_MODEL_VERSION not in tags:
        return
    mlflow_client = client(uri)
    version = mlflow_client.get_model_version(tags[TAG_MODEL_NAME], tags[TAG_MODEL_VERSION])
    # Stores do not all keep a version's model_id; its source `models:/<model id>` names it.
    source = re.fullmatch(r"models:/(m-[0-9a-f]+)", version.source or "")
    model_id = version.model_id or (source[1] if source else None)
    if model_id:
        mlflow_client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
