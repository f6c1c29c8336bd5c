"""One turn of the labeling loop, as the weekly retrain runs it (docs/insight.md):

1. list the labeled exports under `--labels` (each a folder in CVAT's "Segmentation mask 1.1"
   layout: `ImageSets/Segmentation/default.txt`, `JPEGImages/`, `SegmentationClass/`);
2. ingest each one not yet ingested into `<data>/labeled/<export>/` (fcn.data.ingest, the
   `--voc` path, checked against the dataset's own class list);
3. fine-tune from `models:/NAME@champion` on the seed train split plus every ingested export
   (fcn.training.driver; the new checkpoint records the class distribution of them all, the
   next nights' drift reference);
4. score the new version on the fixed validation split (fcn.evaluation.job);
5. the champion rule of fcn.tracking.registry decides promotion (training registers the best
   checkpoint through `register_checkpoint`: equal val digests and a higher mean IU).

A week without a new export trains nothing. The run name is `<name>-<newest export>`, so a
cycle that died is resumed by the next submission with the same labels.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass

from fcn import storage, tracking
from fcn.config import CycleConfig, EvaluateConfig, IngestConfig, TrainConfig
from fcn.data import ingest
from fcn.data.contract import SUCCESS, read_classes
from fcn.evaluation import job as evaluation
from fcn.training import driver as training

LABELED = "labeled"  # <data>/labeled/<export>/: one ingested dataset per export
EXPORT_SPLIT = "default"  # the split name CVAT writes (fcn.nightly.cvat.SPLIT)
EXPORT_LIST = f"ImageSets/Segmentation/{EXPORT_SPLIT}.txt"  # marks a folder as an export


@dataclass(frozen=True)
class Export:
    name: str  # the folder's name under --labels
    uri: str  # its root (what `ingest --voc` reads)
    ingested: bool  # <data>/labeled/<name>/_SUCCESS exists

    def split(self) -> str:
        """Its split under --data, as train's --train-split names it."""
        return f"{LABELED}/{self.name}/{EXPORT_SPLIT}"


@dataclass(frozen=True)
class CycleResult:
    """What a turn did: the exports it ingested, the training and evaluation runs, and the
    champion before and after (the registry's decision)."""

    exports: tuple[Export, ...]  # all of them, as found before this turn
    ingested: tuple[str, ...]  # the exports ingested this turn (none: nothing trained)
    labeled_images: int  # rows of every ingested export
    previous_champion: tuple[str, float] | None  # (version, mean IU) before the turn
    train_run_id: str | None = None
    version: str | None = None  # the registered fine-tune
    mean_iu: float | None = None  # its val mean IU, measured by training
    eval_mean_iu: float | None = None  # the same version scored by the evaluate job
    eval_run_id: str | None = None
    champion: str | None = None  # the champion's version after the turn
    promoted: bool = False


def find_exports(config: CycleConfig) -> list[Export]:
    """The export folders under `--labels`, by name; an export is a folder holding
    EXPORT_LIST (a prefix on S3)."""
    where = storage.locate(config.labels)
    roots = []
    for chunk in where.walk((".txt",)):
        for path in chunk.column("path").to_pylist():
            if path.endswith("/" + EXPORT_LIST):
                roots.append(path[: -len("/" + EXPORT_LIST)])
    exports = []
    for root in sorted(roots):
        name = root[len(where.path) + 1 :]
        if not name or "/" in name:
            raise ValueError(
                f"--labels {config.labels}: {where.uri_of(root)} is not a folder directly "
                "under it (one folder per export)"
            )
        done = storage.exists(storage.join(config.data, f"{LABELED}/{name}/{SUCCESS}"))
        exports.append(Export(name, where.uri_of(root), done))
    return exports


def check(config: CycleConfig) -> tuple[CycleConfig, list[Export], tuple[str, float] | None]:
    """(config with local paths absolute, the exports, the champion's version and mean IU),
    after checking the settings, the data and that the model has a champion: one line, before
    Ray starts."""
    config.validate()
    paths = ("data", "labels", "storage")
    config = dataclasses.replace(config, **{p: storage.absolute(getattr(config, p)) for p in paths})
    storage.locate(config.data)  # refuses a bad URI with one line
    read_classes(config.data)  # the seed dataset finished ingesting
    if not storage.exists(config.labels):
        raise FileNotFoundError(f"--labels {config.labels} does not exist")
    tracking.checked_model(champion_uri(config))  # the champion exists and loads
    return config, find_exports(config), tracking.champion_mean_iu(config.registered_model)


def champion_uri(config: CycleConfig) -> str:
    return f"models:/{config.registered_model}@{tracking.CHAMPION}"


def run(config: CycleConfig) -> CycleResult:
    """One turn (the module's docstring); returns what it did."""
    config, exports, previous = check(config)
    new = [e for e in exports if not e.ingested]
    if not new:
        return CycleResult(tuple(exports), (), _labeled_images(config, exports), previous,
                           champion=previous[0] if previous else None)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fcn-cycle-") as tmp:
        classes_file = os.path.join(tmp, "classes.json")
        with open(classes_file, "w") as f:  # the labels are checked against the data's list
            json.dump(read_classes(config.data).to_dict(), f)
        checked = [ingest.check_config(_ingest_config(config, e, classes_file)) for e in new]
        for one in checked:
            ingest.run(one)
    trained = training.run(training.validate(_train_config(config, exports)))
    scores = _evaluate(config, trained.model_version)
    after = tracking.champion_mean_iu(config.registered_model)
    return CycleResult(
        exports=tuple(exports),
        ingested=tuple(e.name for e in new),
        labeled_images=_labeled_images(config, exports),
        previous_champion=previous,
        train_run_id=trained.run_id,
        version=trained.model_version,
        mean_iu=trained.best_mean_iu,
        eval_mean_iu=scores.get("mean_iu"),
        eval_run_id=scores.get("run_id"),
        champion=after[0] if after else None,
        promoted=trained.champion,
    )


def _ingest_config(config: CycleConfig, export: Export, classes_file: str) -> IngestConfig:
    return IngestConfig(
        output=storage.join(config.data, f"{LABELED}/{export.name}"),
        voc=export.uri,
        voc_splits=(EXPORT_SPLIT,),
        classes=classes_file,
    )


def _train_config(config: CycleConfig, exports: list[Export]) -> TrainConfig:
    """The fine-tune: from the champion (its model; its width by train's default), on the
    seed split and every export, registered under the same name so the rule can promote it."""
    _, champion = tracking.checked_model(champion_uri(config))
    newest = exports[-1].name
    return TrainConfig(
        data=config.data,
        model=champion.model,
        storage=config.storage,
        name=f"{config.name}-{newest}",
        experiment=config.experiment,
        registered_model=config.registered_model,
        init=champion_uri(config),
        train_split=(config.train_split, *(e.split() for e in exports)),
        val_split=config.val_split,
        iterations=config.iterations,
        eval_every=config.eval_every,
        preset=config.preset,
        lr=config.lr,
        batch_size=config.batch_size,
        crop_size=config.crop_size,
        class_weights=config.class_weights,
        workers=config.workers,
        gpu=config.gpu,
        cpus_per_worker=config.cpus_per_worker,
        threads=config.threads,
        seed=config.seed,
    )


def _evaluate(config: CycleConfig, version: str | None) -> dict:
    """The evaluate job on the new version, pinned (empty without a version or --no-evaluate)."""
    if version is None or not config.evaluate:
        return {}
    checked = evaluation.validate(
        EvaluateConfig(
            data=config.data,
            model=f"models:/{config.registered_model}/{version}",
            split=config.val_split,
            experiment=config.eval_experiment,
            workers=config.workers if config.eval_workers is None else config.eval_workers,
            gpu=config.gpu,
            cpus_per_worker=config.cpus_per_worker,
        )
    )
    return evaluation.run(checked)


def _labeled_images(config: CycleConfig, exports: list[Export]) -> int:
    """Rows of every ingested export (their `_SUCCESS` summaries)."""
    from fcn.data.contract import read_summary

    total = 0
    for export in exports:
        root = storage.join(config.data, f"{LABELED}/{export.name}")
        if storage.exists(storage.join(root, SUCCESS)):
            split = read_summary(root).get("splits", {}).get(EXPORT_SPLIT, {})
            total += int(split.get("written", 0))
    return total
