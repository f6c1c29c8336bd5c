"""The train job's settings (jobs/train.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, placement, required, setting

# Spelled out here, not read from fcn.engine.models: --help imports no torch (a test checks
# that this is the list of the models that build).
MODELS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "fcn-googlenet")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Fine-tune an FCN with Ray Train (data-parallel) on an ingested dataset.

    Optimizer settings left unset come from `--preset` (fcn/optim.py PRESETS): `paper` (SGD,
    lr 1e-4, momentum 0.9, batch 20, mean loss), `heavy` (the reference repo: SGD, lr
    1e-10/1e-12/1e-14, momentum 0.99, batch 1, summed loss; for fcn-alexnet its AlexNet
    solver, which is `paper`) or `fast` (Adam lr 1e-4, for from-scratch CPU demos: the
    paper's recipes assume ImageNet weights and take days). The class list (names, colors,
    count) comes from the dataset.
    """

    data: str = required("root of the ingested Parquet dataset (holds train/ and val/)")
    model: str = setting(
        "fcn32s",
        "model name",
        choices=MODELS,
    )
    storage: str = setting("./runs", "where checkpoints go (s3://bucket/prefix or local path)")
    name: str = setting("fcn", "run name; the same name again resumes that run")
    experiment: str = setting("fcn", "MLflow experiment")
    registered_model: str | None = setting(
        "fcn", "register the best checkpoint under this MLflow model name (empty: don't)"
    )
    num_classes: int | None = setting(
        None, "classes scored (default: the dataset's class list, which ingest records; VOC's "
        "21 for data that records none); a number the dataset's list disagrees with is an error",
    )  # fmt: skip
    init: str | None = setting(
        None,
        "initial weights: 'imagenet' (torchvision backbone), a pytorch-fcn .pth file, or a "
        "checkpoint / models:/ / runs:/ URI of a previous run (staged 32s->16s->8s by surgery)",
    )
    # --- schedule --------------------------------------------------------------------------
    iterations: int = setting(100, "optimizer steps in total (a resumed run continues to it)")
    eval_every: int = setting(50, "evaluate on val and checkpoint every this many iterations")
    preset: str = setting(
        "paper", "optimizer recipe; 'heavy' with fcn-alexnet is the reference repo's AlexNet "
        "solver, i.e. 'paper'; fcn-googlenet has no 'heavy'",
        choices=("paper", "heavy", "fast"), group="optimisation",
    )  # fmt: skip
    optimizer: str | None = setting(None, "override the preset", choices=("sgd", "adam"))
    lr: float | None = setting(None, "learning rate (default: the preset's)")
    momentum: float | None = setting(None, "SGD momentum (default: the preset's)")
    weight_decay: float | None = setting(None, "weight decay, not on biases (default: preset)")
    batch_size: int | None = setting(
        None, "images per iteration over all workers (default: the preset's); whole images "
        "are accumulated one at a time, crops go through as one minibatch",
        group="optimisation",
    )  # fmt: skip
    loss: str | None = setting(
        None, "per-pixel loss reduction: 'sum' (reference) or 'mean'", choices=("sum", "mean")
    )
    score_lr_mult: float | None = setting(
        None, "lr multiplier of the new score layers (default: the preset's; 1 in the paper's)"
    )
    # --- data ------------------------------------------------------------------------------
    train_split: tuple[str, ...] = setting(
        ("train",), "split(s) trained on, folders under --data; several are trained on as one "
        "(`--train-split train labeled-2026-11-27/default`: e.g. labels ingested under --data)",
    )  # fmt: skip
    val_split: str = setting("val", "split evaluated on")
    crop_size: int | None = setting(
        None, "random crops of this size (pad: void 255), or none: whole images (the paper)"
    )
    flip: bool = setting(False, "random horizontal flips (the paper found no gain)")
    cache_reads: bool = setting(
        True, "read the training split once and keep its encoded rows in Ray's object store "
        "(later epochs skip the reads)",
    )  # fmt: skip
    loader: str = setting(
        "auto", "how workers get their training crops: 'ray-data' (a Ray Data pipeline split "
        "over the workers, decoding and cropping in its own tasks), 'worker' (the driver reads "
        "the split once; each worker decodes and crops its share itself: no pipeline to start, "
        "for small splits), 'auto': 'worker' for a cached split of at most 64 MiB",
        choices=("auto", "ray-data", "worker"),
    )  # fmt: skip
    val_limit: int | None = setting(None, "evaluate on the first N val images only")
    val_images_logged: int = setting(3, "val images logged to MLflow with predicted masks")
    # --- options from the paper ------------------------------------------------------------
    class_weights: str = setting(
        "none", "loss weights per class: none, 'balanced' (median frequency over train) or "
        "'balanced-sqrt' (its square root: milder, for a dominant background)",
        choices=("none", "balanced", "balanced-sqrt"),
    )  # fmt: skip
    loss_sample: float = setting(
        0.0, "spatial loss sampling: drop each final-layer cell from the loss with this p"
    )
    classifier_only: bool = setting(False, "train the score layers only, the rest frozen")
    learnable_upsampling: bool = setting(False, "let the bilinear upsampling layers learn")
    # --- not from the paper ----------------------------------------------------------------
    width: float | None = setting(
        None, "VGG16 channel multiplier: 1 = the paper's network (default; with --init a "
        "checkpoint: its width); 0.25 = 1/16 of the FLOPs, trains from scratch on a CPU",
    )  # fmt: skip
    # --- scale -----------------------------------------------------------------------------
    workers: int = setting(2, "data-parallel training workers")
    gpu: bool = setting(False, "one GPU per worker (NCCL); CPU workers use gloo")
    cpus_per_worker: float = setting(1.0, "logical CPUs reserved per worker")
    threads: int | None = setting(None, "torch threads per worker (default: cpus_per_worker)")
    amp: str = setting("none", "mixed precision on GPU", choices=("none", "bf16", "fp16"))
    channels_last: bool = setting(False, "channels_last memory format (faster convs on CPU/GPU)")
    max_failures: int = setting(3, "worker-group restarts from the last checkpoint")
    placement_resource: str | None = placement("training workers")
    seed: int = setting(0, "seed of weights init and data order")
    # Off by default: a sampling thread per node and ~10 more metrics every 10 s.
    system_metrics: bool = setting(
        False, "log each training node's CPU, memory, disk, network (and GPU, with "
        "nvidia-ml-py installed) use as MLflow system metrics", group="tracking",
    )  # fmt: skip

    def __post_init__(self):
        # One name as a plain string: how code written when this setting held one split says it.
        if isinstance(self.train_split, str):
            object.__setattr__(self, "train_split", (self.train_split,))

    def validate(self) -> TrainConfig:
        """Self; a ValueError naming the setting when one is out of range (the driver calls
        this before Ray starts; optimizer settings are checked by `fcn.optim.recipe`)."""
        if not self.train_split or len(set(self.train_split)) != len(self.train_split):
            raise ValueError(f"--train-split needs one or more distinct splits, got "
                             f"{list(self.train_split)}")  # fmt: skip
        at_least_one = ("iterations", "eval_every", "workers")
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.num_classes is not None and not 1 <= self.num_classes <= 255:
            raise ValueError("--num-classes must be in 1..255 (255 is void)")
        if not 0 <= self.loss_sample < 1:
            raise ValueError("--loss-sample must be in [0, 1)")
        if self.cpus_per_worker <= 0 or self.val_images_logged < 0 or self.max_failures < 0:
            raise ValueError("--cpus-per-worker must be > 0, --val-images-logged and "
                             "--max-failures >= 0")  # fmt: skip
        if self.crop_size is not None and self.crop_size < 1:
            raise ValueError("--crop-size must be >= 1")
        if self.width not in (None, 1.0):  # what fcn.models.build_model would refuse
            if self.width <= 0 or self.model in ("fcn-alexnet", "fcn-googlenet"):
                raise ValueError(f"--width must be > 0 and applies to the VGG16 models only, "
                                 f"not {self.model}")  # fmt: skip
            if self.init == "imagenet":
                raise ValueError("--init imagenet: ImageNet weights exist for --width 1 only")
        return self
