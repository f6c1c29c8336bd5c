"""Each job's settings as a frozen dataclass; the command line is generated from the fields.

One source of truth: the same object is parsed from the CLI, passed to the job, logged to
MLflow as params and saved beside each checkpoint, so a result always names what made it.
A field's `metadata["help"]` is its `--help` text; `metadata["choices"]` restricts values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field


def setting(default, help: str, **extra):
    """A dataclass field carrying its CLI help (and optional `choices`)."""
    return field(default=default, metadata={"help": help, **extra})


def required(help: str, **extra):
    return field(metadata={"help": help, "required": True, **extra})


def placement(who: str):
    """The `--placement-resource` setting of a job whose `who` (training workers, model
    actors...) should run only on some nodes."""
    return setting(
        None, f"custom Ray resource each of the {who} asks one unit of, so they run only on the "
        "nodes started with it (`ray start --resources '{\"NAME\": N}'`, N per node); "
        "default: any node", group="cluster",
    )  # fmt: skip


# --- the jobs' settings (each job's owner keeps its own class) -------------------------------


@dataclass(frozen=True)
class IngestConfig:
    """Read VOC / SBD / unlabeled images and write validated Parquet shards."""

    output: str = required("where the Parquet dataset goes (s3://bucket/prefix or a local path)")
    voc: str | None = setting(None, "root of a VOC2011/2012 tree (holds JPEGImages/)")
    sbd: str | None = setting(None, "root of an SBD tree (holds dataset/img and dataset/cls)")
    unlabeled: str | None = setting(None, "prefix of unlabeled images (jpg/png, nested)")
    split: tuple[str, ...] = setting(
        (),
        "named id lists NAME=IDS_FILE (e.g. seg11valid=s3://.../seg11valid.txt); ids are taken "
        "from VOC when listed there, else from SBD; given lists replace the default splits",
    )
    classes: str | None = setting(
        None, "class list file: one 'name [R G B | #RRGGBB]' per line, or JSON; default: VOC 21"
    )
    preset: str | None = setting(
        None,
        "'reference': train = SBD train (SBD labels), val = VOC val (or each --split list) "
        "minus SBD train ids, i.e. seg11valid on VOC2011; no image in both",
        choices=("reference",),
        group="data",
    )
    voc_splits: tuple[str, ...] = setting(
        ("train", "val"), "VOC ImageSets/Segmentation lists to ingest (trainval is their union)"
    )
    # ~256 VOC images (~30 MB) per shard: enough files for parallel reads, few enough to list.
    rows_per_shard: int = setting(256, "rows per Parquet file (one Ray task writes one file)")
    # Row groups of ~32 images (~4 MB) let a streaming reader hold little in memory at once.
    rows_per_row_group: int = setting(32, "rows per Parquet row group")
    # VOC images are ~0.2 MP, phone photos up to ~50 MP; beyond this a file is treated as a
    # decompression bomb and rejected before any pixel is decoded.
    max_pixels: int = setting(64_000_000, "largest width x height accepted")
    # Reads are latency-bound on object stores: a few threads per task hide the round trips.
    read_threads: int = setting(8, "concurrent object reads inside each shard task")
    concurrency: int | None = setting(None, "max shard tasks at once (default: Ray decides)")

    def validate(self) -> IngestConfig:
        """Self; a ValueError naming the flag when a count is below 1."""
        for name in ("rows_per_shard", "rows_per_row_group", "max_pixels", "read_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_flag(name)} must be >= 1, got {getattr(self, name)}")
        return self


@dataclass(frozen=True)
class TrainConfig:
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
        choices=("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "fcn-googlenet"),
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


@dataclass(frozen=True)
class EvaluateConfig:
    """Evaluate a checkpoint or registered model on a split, across Ray Train workers."""

    data: str = required("root of the ingested Parquet dataset")
    model: str = required("checkpoint directory URI, or an MLflow models:/ or runs:/ URI")
    split: str = setting("val", "split evaluated")
    limit: int | None = setting(None, "the first N images of the split only")
    experiment: str = setting("fcn-eval", "MLflow experiment of the evaluation run")
    workers: int = setting(2, "evaluation workers (the split is sharded, no image twice)")
    gpu: bool = setting(False, "one GPU per worker")
    cpus_per_worker: float = setting(1.0, "logical CPUs reserved per worker")
    placement_resource: str | None = placement("evaluation workers")
    storage: str | None = setting(None, "Ray Train run storage (default: a temp dir)")

    def __post_init__(self):
        # One line for the user, raised while parsing: before Ray or MLflow is touched.
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1 (leave it out for the whole split), "
                             f"got {self.limit}")  # fmt: skip
        if self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")


@dataclass(frozen=True)
class SegmentConfig:
    """Segment every new image under a prefix and write VOC-palette mask PNGs back.

    The same frozen object goes to the driver, the CPU stages and the model actors (it pickles
    through Ray); validation lives in `validate`.
    """

    input: str = required("prefix of images (or an ingested Parquet split) to segment")
    output: str = required("prefix where masks, the state table and run manifests go")
    model: str = required("checkpoint directory URI, or an MLflow models:/ or runs:/ URI")
    save_overlays: str | None = setting(
        None, "also write each image segmented this run blended with its mask, over a legend "
        "of its classes, as a PNG under this prefix at the mask's key (apart from --input "
        "and --output; like mmsegmentation's --show-dir)", group="data",
    )  # fmt: skip
    input_format: str = setting(
        "auto",
        "'images' (a prefix of jpg/png/bmp/webp files), 'parquet' (an ingested split with "
        "uri + image columns) or 'auto' (parquet when the prefix holds .parquet files)",
        choices=("auto", "images", "parquet"),
    )
    # 4 same-size images per forward: enough to amortize per-call overhead on CPU, small
    # enough that one batch of 500x500 VOC images stays well under 1 GB of activations.
    batch_size: int = setting(4, "images per model call (only images of equal size are stacked)")
    # FCN-VGG16 needs ~1 kB of activations per input pixel and class map: 4 MP (four 1000^2
    # photos, or one 4 MP one) keeps an actor within ~4 GB whatever the image sizes.
    max_batch_pixels: int = setting(
        4_000_000, "pixels per forward: a batch of large images is split to stay under it"
    )
    concurrency: int = setting(1, "model actors (each loads the model once)")
    cpus_per_actor: float = setting(1.0, "Ray CPUs reserved per actor")
    threads: int = setting(0, "torch threads per actor; 0 = as many as its reserved CPUs")
    gpus_per_actor: float = setting(0.0, "GPUs per actor; > 0 runs the model on CUDA")
    placement_resource: str | None = placement("model actors")
    # Reads and writes are latency-bound on object stores; two tasks each keep a slow store
    # from idling the model without taking the model actor's cores on a small node.
    io_concurrency: int = setting(2, "read+decode tasks and encode+write tasks running at once")
    # ~12 MP covers phone and DSLR photos; above it one FCN-VGG16 forward needs > 10 GB of
    # activations. Pillow's own bomb guard (89 MP warning, 179 MP error) is far above this.
    max_pixels: int = setting(12_000_000, "larger images are refused (decompression bombs)")
    max_error_fraction: float = setting(
        0.05, "exit non-zero when failed / (done + failed) exceeds this"
    )
    max_images: int | None = setting(
        None, "nightly budget: segment at most this many images, oldest first; the rest wait "
        "for the next night (default: no limit)",
    )  # fmt: skip
    resegment_older_models: bool = setting(
        False, "also re-segment unchanged images whose mask came from an older model (a lower "
        "registry version of the same model, or another model URI), oldest masks first, "
        "within --max-images",
    )  # fmt: skip
    allow_empty: bool = setting(False, "an input that lists no images is not an error")
    scales: tuple[float, ...] = setting(
        (1.0,), "multi-scale inference: average class probabilities over these input scales"
    )
    shift_and_stitch: bool = setting(
        False,
        "dense logits by shift-and-stitch over the model's stride instead of its upsampling "
        "(fcn32s, fcn-alexnet, fcn-googlenet; costs stride^2 = 1024 forwards per image)",
    )
    class_counts: bool = setting(True, "record per-image class pixel counts in the manifest")
    retry_errors: bool = setting(False, "retry images whose unchanged bytes failed before")
    force: bool = setting(False, "segment every image again, even unchanged ones")
    experiment: str = setting("segment", "MLflow experiment (used when MLFLOW_TRACKING_URI is set)")
    drift_threshold: float | None = setting(
        None, "exit 3 and tag the MLflow run drift=true when the night's Jensen-Shannon "
        "distance to a reference (0..1) exceeds this (docs/insight.md); default: report only",
    )  # fmt: skip
    # A week: long enough to smooth weekday/weekend swings, short enough to follow seasons.
    drift_nights: int = setting(7, "earlier nights summed into the trailing drift reference")
    queue_size: int = setting(
        50, "images of the night queued for labeling, most uncertain first (0: no queue)"
    )

    def validate(self) -> None:
        """Refuse settings that cannot work before any listing or model download."""
        if self.drift_threshold is not None and not 0 <= self.drift_threshold <= 1:
            raise ValueError("--drift-threshold must lie in [0, 1] (a Jensen-Shannon distance)")
        if self.drift_nights < 1 or self.queue_size < 0:
            raise ValueError("--drift-nights must be >= 1 and --queue-size >= 0")
        if self.batch_size < 1 or self.concurrency < 1 or self.io_concurrency < 1:
            raise ValueError("--batch-size, --concurrency and --io-concurrency must be >= 1")
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ValueError(f"--scales must be positive, got {self.scales}")
        if not 0 <= self.max_error_fraction <= 1:
            raise ValueError("--max-error-fraction must lie in [0, 1]")
        if self.max_images is not None and self.max_images < 0:
            raise ValueError("--max-images must be >= 0")
        if self.max_batch_pixels < 1:
            raise ValueError("--max-batch-pixels must be >= 1")


@dataclass(frozen=True)
class CompareConfig:
    """Compare an experiment's training runs: table by best mean IU, curves, champion alias."""

    experiment: str = required("MLflow experiment whose runs are compared")
    output: str = setting("./results/compare", "where the CSV, Markdown and PNGs go (URI)")
    # Five curves stay readable on one plot; the table always lists every run.
    top: int = setting(5, "how many of the best runs get curves and per-class bars")
    promote: bool = setting(
        False,
        "move the 'champion' alias to the best finished run's model, when it was validated on "
        "the champion's validation data",
    )
    registered_model: str | None = setting(
        None, "registered model to promote in (needed only if the run registered several)"
    )
    log_artifacts: bool = setting(False, "also log the outputs as a comparison run's artifacts")
    tracking_uri: str | None = setting(None, "MLflow tracking URI (default: MLFLOW_TRACKING_URI)")


# --- CLI generation --------------------------------------------------------------------------


def _unwrap_optional(tp):
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


class _ExtendReplacingDefault(argparse.Action):
    """`--split a=x b=y` and `--split a=x --split b=y` both give (a=x, b=y); a given flag
    replaces the default instead of adding to it (argparse's "extend" would add)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        kept = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, kept + list(values))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the job docstring's layout; appends each default unless it is None or the
    help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


# Each flag's --help group, by field name (one vocabulary across the jobs); a field's
# `metadata["group"]` overrides it, and a name in none of them stays under "options".
GROUPS = {
    "data": (
        "data", "input", "output", "input_format", "voc", "sbd", "unlabeled", "split",
        "classes", "voc_splits", "train_split", "val_split", "limit", "val_limit", "crop_size",
        "flip", "cache_reads", "rows_per_shard", "rows_per_row_group", "max_pixels",
        "allow_empty", "max_images", "force", "retry_errors", "resegment_older_models", "source",
    ),
    "model": (
        "model", "init", "num_classes", "width", "learnable_upsampling", "classifier_only",
        "scales", "shift_and_stitch", "max_bytes",
    ),
    "optimisation": (
        "iterations", "eval_every", "optimizer", "lr", "momentum", "weight_decay", "loss",
        "score_lr_mult", "class_weights", "loss_sample", "seed",
    ),
    "cluster": (
        "workers", "gpu", "cpus_per_worker", "threads", "amp", "channels_last", "max_failures",
        "concurrency", "read_threads", "cpus_per_actor", "gpus_per_actor", "io_concurrency",
        "max_batch_pixels",
    ),
    "tracking": (
        "storage", "name", "experiment", "registered_model", "val_images_logged",
        "tracking_uri", "log_artifacts", "champion", "promote", "top",
    ),
}  # fmt: skip
_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


def _group(parser, groups: dict, f: dataclasses.Field):
    """The argument group `f`'s flag goes in (created in GROUPS' order on first use)."""
    name = f.metadata.get("group") or _GROUP_OF.get(f.name)
    if name is None:
        return parser
    if name not in groups:
        groups[name] = parser.add_argument_group(name)
    return groups[name]


def build_parser(
    cls, description: str | None = None, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or (cls.__doc__ or "").strip(),
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    groups: dict = {}
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        kwargs: dict = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.metadata.get("required"):
            kwargs["required"] = True
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            item = typing.get_args(tp)[0]
            kwargs["type"] = item
            kwargs["action"] = _ExtendReplacingDefault
            kwargs["nargs"] = "+"
        elif origin is typing.Literal:
            kwargs["choices"] = typing.get_args(tp)
            kwargs["type"] = type(typing.get_args(tp)[0])
        else:
            kwargs["type"] = tp
        if optional and "default" not in kwargs and not kwargs.get("required"):
            kwargs["default"] = None
        _group(parser, groups, f).add_argument(_flag(f.name), **kwargs)
    return parser


def parse(cls, argv: list[str] | None = None, description: str | None = None, epilog=None):
    """Parse `argv` (default: sys.argv[1:]) into a `cls` instance; `epilog`: examples shown
    after the flags in --help."""
    values = vars(build_parser(cls, description, epilog).parse_args(argv))
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        tp, _ = _unwrap_optional(hints[name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


def to_dict(config) -> dict:
    """Plain JSON-able dict (tuples become lists): for config.json and MLflow params."""
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Rebuild `cls` from a dict saved earlier; unknown keys are ignored (older/newer files)."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kept = {}
    for key, value in values.items():
        if key not in names:
            continue
        tp, _ = _unwrap_optional(hints[key])
        kept[key] = tuple(value) if typing.get_origin(tp) is tuple and value is not None else value
    return cls(**kept)


@dataclass(frozen=True)
class ImportConfig:
    """Turn published weights (a Caffe .caffemodel or a pytorch-fcn .pth) into a checkpoint."""

    source: str = required(
        "the weights (also --from): a .caffemodel (the authors' Caffe files) or a pytorch-fcn "
        ".pth state_dict, as a local path or any URI (s3://...)"
    )
    output: str = required("checkpoint directory to write (model.pt + config.json), any URI")
    model: str | None = setting(
        None,
        "model name; default: read from the file's layers (a pytorch-fcn FCN-8s or at-once "
        "file whose name does not say which needs it)",
        # The names TrainConfig lists: one list of models.
        choices=next(f for f in dataclasses.fields(TrainConfig) if f.name == "model").metadata[
            "choices"
        ],
    )
    classes: str | None = setting(
        None, "class list file as `ingest --classes` reads it; default: VOC's 21 classes"
    )
    registered_model: str | None = setting(
        None, "also log the checkpoint to MLflow as a new version of this registered model"
    )
    champion: bool = setting(False, "move the registered model's 'champion' alias to it")
    experiment: str = setting("fcn-import", "MLflow experiment of the import run")
    # The published FCN-VGG16 files are ~540 MB; Caffe itself reads at most INT_MAX bytes.
    max_bytes: int = setting(2**31 - 1, "largest weights file read")
