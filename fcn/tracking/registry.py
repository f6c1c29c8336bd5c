"""The model registry: the only code that registers model versions and moves `champion`
(and that attaches a version's ONNX export, `attach_onnx`).

Long module: every write to the registry lives here on purpose (one place to audit what can
register a version or move the alias); the rule, the movers and the writers stay together.

A version is always an MLflow pyfunc model (fcn.tracking.pyfunc) whose artifact `checkpoint/`
is the checkpoint directory, whoever registers it: a training run (`register_checkpoint`) or
published weights (`register_imported`, jobs/import_model.py). The alias moves only through
`promote`, so every alias move passes one rule and is recorded once, as it happens, in the
champion history (fcn.tracking.history: one MLflow run per move); `rollback` moves it back.

The champion rule. A mean IU means something only next to another one measured on the same
validation data: the versions' `val_digest` tags (content digests of the val split).
1. No champion yet: the candidate becomes champion.
2. Equal digests (both recorded and equal, or both unrecorded): comparable. Training asks for
   a higher mean IU (`better_only`); compare --promote and import --champion move it on request.
3. A champion without a digest (imported weights, or a version from before digests) has no
   score on recorded data: a candidate that has one replaces it, its mean IU aside.
4. A candidate without a digest never replaces a champion that has one, and versions with
   different digests are not ranked: refused with the reason. Adopting new validation data, or
   preferring an unmeasured version, is a person's call: set the alias by hand.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass

from fcn.tracking import history
from fcn.tracking.runs import _param_text, client, log_params, redact, run_scope
from fcn.tracking.source import TAG_GIT_COMMIT, git_commit

log = logging.getLogger(__name__)

CHAMPION = "champion"
TAG_MEAN_IU = "mean_iu"
# Content digest of the split a version was validated on (run tag and version tag): mean IUs
# are comparable only between equal digests (the rule above).
TAG_VAL_DIGEST = "val_digest"
# Where an imported version's weights came from (version tags).
TAG_WEIGHTS_SOURCE = "fcn.source"
TAG_WEIGHTS_FORMAT = "fcn.source_format"
TAG_WEIGHTS_SHA256 = "fcn.source_sha256"
# An evaluation or segment run's model: the exact registry version (or a checkpoint's URI).
TAG_MODEL_URI = "model_uri"
TAG_MODEL_NAME = "model_name"
TAG_MODEL_VERSION = "model_version"
MODEL_NAME = "fcn"  # the logged model's name within its run
# A version's ONNX export (jobs/export.py --register): an mlflow.onnx logged model in the
# version's run, named by these version tags.
ONNX_MODEL_NAME = "fcn-onnx"
TAG_ONNX_MODEL = "onnx_model"
TAG_ONNX_SHA256 = "onnx_sha256"
# A pinned registry version, `models:/NAME/VERSION` (what `pin_model_uri` gives).
REGISTRY_VERSION = re.compile(r"models:/([^/@]+)/(\d+)")


@dataclass(frozen=True)
class ChampionDecision:
    """What `promote` did with a version: champion now, or the reason it is not."""

    model_name: str
    version: str
    previous: str | None  # the champion before the decision; None when there was none
    refusal: str | None  # why the alias stayed; None when `version` is the champion now

    @property
    def is_champion(self) -> bool:
        return self.refusal is None


# --- registering ----------------------------------------------------------------------------


def register_version(run_id: str, local_dir: str, model_name: str, tags: dict, uri=None) -> str:
    """Log checkpoint dir `local_dir` as run `run_id`'s pyfunc model and register it as a
    version of `model_name` (created when new), tagged with `_version_tags` and `tags`.

    A run registers at most one version per model: a resumed, finished job registering again
    gets the version it made before. Returns the version.
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
    for key, value in {**_version_tags(local_dir, run_tags), **tags}.items():
        mlflow_client.set_model_version_tag(model_name, version, key, value)
    return str(version)


def register_checkpoint(
    run_id: str, local_dir: str, model_name: str, mean_iu: float, uri=None
) -> tuple[str, bool]:
    """A training run's best checkpoint as a version of `model_name` (`register_version`,
    tagged with its mean IU), champion when it beats the champion under the rule above.

    The version's tags say what it is: mean IU, val and train digests (the run's tags), model,
    width, num_classes, classes, git commit. Returns (version, is_champion).
    """
    version = register_version(run_id, local_dir, model_name, {TAG_MEAN_IU: f"{mean_iu:.6f}"}, uri)
    decision = promote(
        model_name, version, better_only=True, uri=uri, job=history.JOB_TRAIN, source_run=run_id
    )
    if decision.refusal:
        log.warning("%s: %s", model_name, decision.refusal)
    return version, decision.is_champion


def register_imported(
    checkpoint_uri: str,
    saved: dict,
    model_name: str,
    experiment: str,
    champion: bool = False,
    uri=None,
) -> tuple[str, ChampionDecision | None]:
    """Published weights imported as checkpoint `checkpoint_uri` (any URI; `saved`: the
    config.json written there, naming the source in `weights_*`) as a version of `model_name`,
    from a run `import <file>` of `experiment`: the same pyfunc model as a trained version,
    tagged with where its weights came from. It has no val digest and no mean IU; with
    `champion` it is offered to `promote` (rule above). Returns (version, the decision or
    None)."""
    source = os.path.basename(saved["weights_source"].rstrip("/"))
    tags = {
        TAG_WEIGHTS_SOURCE: redact(saved["weights_source"]),
        TAG_WEIGHTS_FORMAT: saved["weights_format"],
        TAG_WEIGHTS_SHA256: saved["weights_sha256"],
    }
    with tempfile.TemporaryDirectory(prefix="fcn-import-") as tmp:
        local = _local_checkpoint(checkpoint_uri, tmp)
        with run_scope(experiment, f"import {source}", uri=uri) as run_id:
            log_params(run_id, {k: v for k, v in saved.items() if k != "classes"}, uri)
            version = register_version(run_id, local, model_name, tags, uri)
            decision = None
            if champion:
                reason = f"imported weights {source} offered with --champion"
                decision = promote(model_name, version, uri=uri, job=history.JOB_IMPORT,
                                   reason=reason, source_run=run_id)  # fmt: skip
    return version, decision


def _local_checkpoint(checkpoint_uri: str, tmp: str) -> str:
    """A local directory holding the checkpoint: MLflow logs artifacts from local files."""
    from fcn import storage
    from fcn.engine import checkpoint

    if not storage.is_remote(checkpoint_uri):
        return storage.strip_scheme(checkpoint_uri)
    for name in (checkpoint.MODEL_FILE, checkpoint.CONFIG_FILE):
        fs, path = storage.filesystem(storage.join(checkpoint_uri, name))
        fs.get(path, os.path.join(tmp, name))
    return tmp


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


def attach_onnx(model_name: str, version, onnx_path: str, sha256: str, uri=None) -> str:
    """Log the ONNX file `onnx_path` (of version `version`'s checkpoint, content digest
    `sha256`) as an mlflow.onnx model in the version's run and name it in the version's tags
    `onnx_model` (its `models:/<model id>` URI) and `onnx_sha256`. The same file attached
    again is not logged twice. Returns the ONNX model's URI."""
    import mlflow.onnx
    import onnx
    from mlflow.entities import LoggedModelOutput

    mlflow_client = client(uri)
    found = mlflow_client.get_model_version(model_name, str(version))
    if found.tags.get(TAG_ONNX_SHA256) == sha256 and found.tags.get(TAG_ONNX_MODEL):
        return found.tags[TAG_ONNX_MODEL]
    if not found.run_id:
        raise ValueError(
            f"models:/{model_name}/{version} has no run to log its ONNX model in (registered "
            "by hand from a path?): attach the file by hand, or register the checkpoint anew"
        )
    experiment_id = mlflow_client.get_run(found.run_id).info.experiment_id
    logged = mlflow_client.create_logged_model(
        experiment_id, ONNX_MODEL_NAME, source_run_id=found.run_id
    )
    try:
        with tempfile.TemporaryDirectory(prefix="fcn-onnx-") as tmp:
            path = os.path.join(tmp, "model")
            # One file (the nets are < 2 GB): what a serving team copies to its runtime.
            mlflow.onnx.save_model(
                onnx.load(onnx_path), path, save_as_external_data=False,
                pip_requirements=_onnx_requirements(), metadata={"onnx_sha256": sha256},
            )  # fmt: skip
            mlflow_client.log_model_artifacts(logged.model_id, path)
    except BaseException:
        mlflow_client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    mlflow_client.finalize_logged_model(logged.model_id, "READY")
    mlflow_client.log_outputs(found.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    onnx_uri = f"models:/{logged.model_id}"
    mlflow_client.set_model_version_tag(model_name, str(version), TAG_ONNX_MODEL, onnx_uri)
    mlflow_client.set_model_version_tag(model_name, str(version), TAG_ONNX_SHA256, sha256)
    return onnx_uri


def _onnx_requirements() -> list[str]:
    """What running the ONNX model needs: the installed onnx and onnxruntime releases."""
    import importlib.metadata

    return [f"{name}=={importlib.metadata.version(name)}" for name in ("onnx", "onnxruntime")]


# --- the champion ---------------------------------------------------------------------------


def promote(
    model_name: str,
    version,
    better_only: bool = False,
    uri=None,
    job: str = history.JOB_PROMOTE,
    reason: str | None = None,
    force: bool = False,
    source_run: str | None = None,
) -> ChampionDecision:
    """Move `champion` to `version` of `model_name` when the rule above allows it
    (`better_only`: rule 2 also asks for a higher mean IU; `force`: a refusal of rules 3-4 is
    overridden, and recorded as such). Returns the decision; a refusal leaves the alias where
    it was. Every move is recorded once in the champion history with `job` (who moved it),
    `reason` (default: the rule that allowed it) and `source_run` (the mover's run)."""
    mlflow_client = client(uri)
    candidate = mlflow_client.get_model_version(model_name, str(version))
    champion = champion_version(model_name, uri)
    previous = None if champion is None else str(champion.version)
    if previous == str(candidate.version):
        return ChampionDecision(model_name, previous, previous, None)
    refusal = incomparable(candidate, champion)
    overridden = refusal if force else None
    if refusal is None and better_only:
        refusal = _not_better(candidate, champion)
    if force:
        refusal = None
    if refusal is None:
        history.recorded(
            model_name, candidate, champion, reason or _why(candidate, champion, better_only),
            job, lambda: mlflow_client.set_registered_model_alias(
                model_name, CHAMPION, candidate.version
            ), overridden, source_run, uri,
        )  # fmt: skip
    return ChampionDecision(model_name, str(candidate.version), previous, refusal)


def _why(candidate, champion, better_only: bool) -> str:
    """The rule that let `candidate` replace `champion` (a move's default reason)."""
    if champion is None:
        return "no champion yet"
    if _digest(candidate) and not _digest(champion):
        return f"champion version {champion.version} has no recorded validation data"
    if better_only:
        return (
            f"mean IU {candidate.tags.get(TAG_MEAN_IU)} beats champion version "
            f"{champion.version}'s {champion.tags.get(TAG_MEAN_IU, 'unrecorded')} on the same "
            "validation data"
        )
    return "moved on request"


def rollback(
    model_name: str, reason: str, to=None, force: bool = False, uri=None
) -> ChampionDecision:
    """Move `champion` back: to version `to`, by default to the champion before the current
    one (the history's latest move to the current champion says which). A LookupError names
    what is missing (no champion, no history, no such version); the champion rule still
    applies, so a version validated on other data is refused unless `force` (recorded)."""
    from mlflow.exceptions import MlflowException

    current = champion_version(model_name, uri)
    if current is None:
        raise LookupError(f"registered model {model_name!r} has no champion to roll back")
    if to is None:
        made = [m for m in history.champion_history(model_name, uri)
                if m.to_version == str(current.version)]  # fmt: skip
        if not made or made[-1].from_version is None:
            raise LookupError(
                f"the champion history of {model_name!r} names no champion before version "
                f"{current.version}: say which version with --to"
            )
        to = made[-1].from_version
    if str(to) == str(current.version):
        raise LookupError(f"version {to} of {model_name!r} is the champion already")
    try:
        client(uri).get_model_version(model_name, str(to))
    except MlflowException as err:
        raise LookupError(f"registered model {model_name!r} has no version {to}") from err
    return promote(model_name, to, uri=uri, job=history.JOB_ROLLBACK, reason=reason, force=force)


def incomparable(candidate, champion) -> str | None:
    """Why `candidate` (a ModelVersion) may not replace `champion` (rules 3 and 4 above), or
    None when it may."""
    if champion is None:
        return None
    mine, theirs = _digest(candidate), _digest(champion)
    if mine == theirs or (mine and not theirs):
        return None
    if not mine:
        return (
            f"version {candidate.version} has no recorded validation data (imported weights?), "
            f"champion version {champion.version} was validated on {theirs}: an unmeasured "
            "version never replaces a measured champion, so the champion stays (set the alias "
            "by hand to prefer it)"
        )
    return (
        f"version {candidate.version} was validated on val data {mine}, "
        f"champion version {champion.version} on {theirs}: mean IUs on "
        "different validation data are not comparable, so the champion stays (set the alias "
        "by hand if the new validation data replaces the old)"
    )


def _not_better(candidate, champion) -> str | None:
    """Rule 2's score test: why `candidate` does not beat `champion`, or None."""
    if champion is None or (_digest(candidate) and not _digest(champion)):
        return None  # rules 1 and 3: nothing measured to beat
    if _mean_iu(candidate) > _mean_iu(champion):
        return None
    return (
        f"version {candidate.version} (mean IU {candidate.tags.get(TAG_MEAN_IU, 'unrecorded')}) "
        f"does not beat champion version {champion.version} "
        f"({champion.tags.get(TAG_MEAN_IU, 'unrecorded')})"
    )


def _digest(version) -> str | None:
    return version.tags.get(TAG_VAL_DIGEST)


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


def model_tags(model_uri: str) -> dict:
    """Run tags naming the model a run used: `model_uri`, and for a registry version
    (`models:/NAME/VERSION`, as `pin_model_uri` gives) `model_name` and `model_version`."""
    tags = {TAG_MODEL_URI: redact(model_uri)}
    match = REGISTRY_VERSION.fullmatch(model_uri)
    if match:
        tags[TAG_MODEL_NAME], tags[TAG_MODEL_VERSION] = match[1], match[2]
    return tags
