"""The segment job's settings (jobs/segment.py), also what its Ray stages and model actors
receive (the frozen object pickles through Ray)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, placement, required, setting
from fcn.config.tiling import Tiling, check_tile, tile, tile_margin, tile_memory


@dataclass(frozen=True)
class SegmentConfig(Settings):
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
    # ~12 MP covers phone and DSLR photos and keeps a decoded night's batch small; tiles
    # (--tile) bound the forward's memory whatever the size, so the cap is a bomb guard.
    # Pillow's own bomb guard (89 MP warning, 179 MP error) is far above this.
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
    tile: str = tile()
    tile_memory_mb: int = tile_memory()
    tile_margin: int | None = tile_margin()
    # PyTorch stays the default: on this project's CPUs ONNX Runtime was not clearly faster
    # (benchmarks/segment_runtime.py, results/onnx.md).
    runtime: str = setting(
        "torch", "what runs the model in the actors: 'torch', or 'onnxruntime' (the checkpoint "
        "exported as jobs/export.py does; CPU, or CUDA with --gpus-per-actor and "
        "onnxruntime-gpu installed): the same masks and statistics",
        choices=("torch", "onnxruntime"),
    )  # fmt: skip
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
        50, "images of the night queued for labeling, by --queue-strategy (0: no queue)"
    )
    queue_strategy: str = setting(
        "diverse", "how the queue picks: 'diverse' (k-center over the most uncertain, "
        "near-duplicates left out; the default: results/active_learning.md), 'random' (a "
        "seeded sample, the baseline) or 'entropy' (most uncertain first); docs/insight.md",
        choices=("random", "entropy", "diverse"),
    )  # fmt: skip
    queue_seed: int = setting(0, "seed of --queue-strategy random")

    def tiling(self) -> Tiling:
        return Tiling(self.tile, self.tile_memory_mb << 20, self.tile_margin)

    def validate(self) -> SegmentConfig:
        """Self, after refusing settings that cannot work (before any listing or model
        download)."""
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
        if self.runtime == "onnxruntime" and self.shift_and_stitch:
            raise ValueError(
                "--shift-and-stitch runs the net's coarse scores, which the ONNX export does not "
                "expose: use --runtime torch for it"
            )
        check_tile(self.tile, self.tile_memory_mb, self.tile_margin)
        if self.runtime == "onnxruntime" and self.tile not in ("auto", "none"):
            raise ValueError(
                "--runtime onnxruntime runs whole images (the ONNX graph does not declare the "
                "net's receptive field that tiles need): use --runtime torch for --tile N"
            )
        if self.max_batch_pixels < 1:
            raise ValueError("--max-batch-pixels must be >= 1")
        return self
