"""The cycle job's settings (jobs/cycle.py): the weekly retrain that closes the labeling loop."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, flag, required, setting


@dataclass(frozen=True)
class CycleConfig(Settings):
    """Ingest the labeled exports not yet ingested, fine-tune the champion on the grown labeled
    set, evaluate the new version on the fixed validation split; the registry's champion rule
    decides whether it is promoted (docs/insight.md, "Closing the loop")."""

    data: str = required(
        "root of the ingested training data (holds the train and val splits); labeled "
        "exports are ingested under <data>/labeled/<export>/"
    )
    labels: str = required(
        "prefix of labeled exports, one folder each: a CVAT 'Segmentation mask 1.1' export "
        "(or the segment job's cvat.zip, corrected and unzipped)"
    )
    registered_model: str = required("registered MLflow model: trained from its champion")
    storage: str = setting("./runs", "where the fine-tuning run's checkpoints go")
    name: str = setting("cycle", "run name prefix: <name>-<newest export> (a rerun resumes)")
    experiment: str = setting("fcn", "MLflow experiment of the training run")
    eval_experiment: str = setting("fcn-eval", "MLflow experiment of the evaluation run")
    train_split: str = setting("train", "the seed training split under --data, kept every round")
    val_split: str = setting("val", "the fixed validation split: mean IUs compare on it alone")
    # A fine-tune, not a training from scratch: a few hundred steps move a converged model.
    iterations: int = setting(200, "optimizer steps of the fine-tune")
    eval_every: int = setting(100, "evaluate on val and checkpoint every this many iterations")
    preset: str = setting("fast", "optimizer recipe (train's --preset)",
                          choices=("paper", "heavy", "fast"))  # fmt: skip
    lr: float | None = setting(None, "learning rate (default: the preset's)")
    batch_size: int | None = setting(None, "images per iteration (default: the preset's)")
    crop_size: int | None = setting(None, "random crops of this size (train's --crop-size)")
    class_weights: str = setting(
        "none", "loss weights per class (train's --class-weights)",
        choices=("none", "balanced", "balanced-sqrt"),
    )  # fmt: skip
    workers: int = setting(2, "training workers, and evaluation workers unless --eval-workers")
    eval_workers: int | None = setting(
        None, "evaluation workers (default: --workers); 0 scores in the job's own process "
        "(no Ray Train run: for a small val split)",
    )  # fmt: skip
    gpu: bool = setting(False, "one GPU per worker")
    cpus_per_worker: float = setting(1.0, "logical CPUs reserved per worker")
    threads: int | None = setting(None, "torch threads per worker (default: cpus_per_worker)")
    seed: int = setting(0, "seed of the fine-tune's data order")
    evaluate: bool = setting(
        True, "also score the new version with the evaluate job (an MLflow evaluation run "
        "tagged with the exact version); training already scores it on the same split",
    )  # fmt: skip

    def validate(self) -> CycleConfig:
        for name in ("iterations", "eval_every", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag(name)} must be >= 1")
        if self.eval_workers is not None and self.eval_workers < 0:
            raise ValueError(f"--eval-workers must be 0 (the driver) or more, "
                             f"got {self.eval_workers}")  # fmt: skip
        if self.train_split == self.val_split:
            raise ValueError("--train-split and --val-split must differ")
        return self
