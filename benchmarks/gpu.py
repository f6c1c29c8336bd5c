"""GPU proof: training (single-process DDP, bf16 and fp32) and the segment batch function on
one accelerator, through the same Ray-free functions the Ray jobs call.

    python benchmarks/gpu.py                          # CUDA: full width, 500^2, ~2-4 minutes
    python benchmarks/gpu.py --device cpu --tiny      # the suite's smoke run (seconds)

Needs only torch, numpy, Pillow, scipy, pyarrow and fsspec (no Ray, MLflow or s3fs): GPU
machines without the cluster stack can run it. What it does, in one process:
1. peak: the best square matmul (bf16 on CUDA, fp32 on CPU) as the MFU denominator;
2. train: FCN-32s and FCN-8s for `--steps` steps on a fixed synthetic batch, bf16 autocast and
   fp32, each wrapped in DistributedDataParallel over a one-process group (NCCL on CUDA, gloo
   on CPU): images/s, MFU, peak memory, first and last loss (it must fall);
3. segment: `fcn.engine.inference.predict` over `--images` generated images of mixed sizes
   (grouped by size, as the segment job's actor does), fp32 and bf16: images/s and pixel agreement;
4. export: a small-width FCN-8s trained a few steps here, its checkpoint and its fp32 masks of
   a few images under `--export` (so another machine can check that the checkpoint loads on
   CPU and gives the same masks: `--verify DIR`).
Prints one table (ratios first, absolute numbers labelled with the device name) and writes it
to `--output`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import matmul_peak, step_gflop  # noqa: E402
from fcn.data.synthetic import render_scene  # noqa: E402
from fcn.engine import checkpoint, optim, step  # noqa: E402
from fcn.engine.classes import voc_classes  # noqa: E402
from fcn.engine.inference import load_model, predict  # noqa: E402
from fcn.engine.models import build_model, preprocess  # noqa: E402

NUM_CLASSES = 21


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--tiny", action="store_true", help="smoke sizes (the test suite's)")
    parser.add_argument("--size", type=int, default=500, help="training crop (paper: 500)")
    parser.add_argument("--batch", type=int, default=8, help="training images per step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--width", type=float, default=1.0, help="VGG16 width (1 = paper)")
    parser.add_argument("--images", type=int, default=256, help="images segmented")
    parser.add_argument("--skip-train", action="store_true", help="segment timings only")
    parser.add_argument("--export", default=None, help="write checkpoint + masks here")
    parser.add_argument("--verify", default=None, help="check an --export dir on this device")
    parser.add_argument("--output", default=str(REPO / "results" / "gpu.md"))
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.steps, args.width, args.images = 48, 2, 2, 0.125, 6
    return args


def init_process_group(device: torch.device) -> None:
    """One-process group: the DDP code path (bucketing, all-reduce) runs as on a cluster."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)


def scenes(count: int, size: int, seed: int = 0):
    """`count` synthetic images (uint8 N x H x W x 3) and masks (N x H x W) of size x size."""
    rng = np.random.default_rng(seed)
    pairs = [render_scene(rng, size, size) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(name: str, args, device, amp: str, images, masks) -> dict:
    """`args.steps` timed steps (after 2 warm-up steps) of `name` on a fixed batch: the same
    `fcn.engine.step.train_step` Ray Train's workers call, the model DDP-wrapped."""
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, width=args.width)
    model, bare = step.prepare(model, device, channels_last=True, ddp=True)
    recipe = optim.Recipe("adam", 1e-4, 0.9, 0.0, args.batch, "mean")  # the `fast` preset
    optimizer = optim.build_optimizer(bare, recipe)
    scaler = step.make_scaler(device, amp)
    spec = preprocess.TORCHVISION
    batch = [(preprocess.normalize(images, spec), torch.from_numpy(masks))]
    options = {"scaler": scaler, "amp": amp, "channels_last": True}
    losses = [step.train_step(model, optimizer, batch, recipe, **options) for _ in range(2)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step.train_step(model, optimizer, batch, recipe, **options))
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "model": bare,
        "images_per_s": args.steps * args.batch / seconds,
        "step_s": seconds / args.steps,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
    }


def mixed_images(count: int, sizes: tuple[int, ...], seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_scene(rng, sizes[i % len(sizes)], sizes[(i // 2) % len(sizes)])[0]
            for i in range(count)]  # fmt: skip


def segment(model, spec, pictures: list[np.ndarray], batch: int, amp: str, device) -> tuple:
    """The segment actor's batch function over `pictures`: equal sizes stacked, `predict`d with
    the confidence statistics, as the actor does. Returns (masks in input order, images/s).

    Every batch shape runs once untimed first: cuDNN picks its kernels per shape
    (`cudnn.benchmark`), which a nightly actor pays once per shape, not per image."""
    chunks = []
    groups = defaultdict(list)
    for i, picture in enumerate(pictures):
        groups[picture.shape].append(i)
    for indices in groups.values():
        chunks += [indices[k : k + batch] for k in range(0, len(indices), batch)]
    warm = {(pictures[chunk[0]].shape, len(chunk)): chunk for chunk in chunks}
    masks: list = [None] * len(pictures)
    with step.amp_context(device, amp):
        for chunk in warm.values():
            predict(model, np.stack([pictures[i] for i in chunk]), spec, statistics=True)
        sync(device)
        start = time.perf_counter()
        for chunk in chunks:
            out, _ = predict(model, np.stack([pictures[i] for i in chunk]), spec, statistics=True)
            for i, mask in zip(chunk, out, strict=True):
                masks[i] = mask
        sync(device)
    return masks, len(pictures) / (time.perf_counter() - start)


def perturbed(name: str, width: float):
    """A random net whose zero-initialised score layers are nudged, so masks are not all 0."""
    model = build_model(name, NUM_CLASSES, width=width)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def export(directory: Path, model, pictures: list[np.ndarray], device) -> None:
    """A checkpoint and the fp32 masks it gives here, for `--verify` on another device."""
    config = {"model": "fcn8s", "num_classes": NUM_CLASSES, "width": model.width,
              "preprocessing": "torchvision", "classes": voc_classes().to_dict()}  # fmt: skip
    checkpoint.save(model.state_dict(), config, str(directory / "checkpoint"))
    loaded = load_model(str(directory / "checkpoint"), device)
    masks, _ = segment(loaded.model, loaded.preprocessing, pictures, 1, "none", device)
    np.savez_compressed(directory / "masks.npz", images=np.stack(pictures), masks=np.stack(masks))


def verify(directory: Path, device) -> float:
    """Share of pixels where this device's fp32 masks equal the exported ones."""
    data = np.load(directory / "masks.npz")
    loaded = load_model(str(directory / "checkpoint"), device)
    masks, _ = segment(loaded.model, loaded.preprocessing, list(data["images"]), 1, "none", device)
    return float((np.stack(masks) == data["masks"]).mean())


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.verify:
        agreement = verify(Path(args.verify), device)
        print(f"masks on {device.type} equal the exported ones on {agreement:.6%} of pixels")
        return 0 if agreement > 0.999 else 1
    # fp32 means fp32: no TF32 (CUDA's default for convolutions) in the fp32 rows.
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.backends.cudnn.benchmark = device.type == "cuda"
    init_process_group(device)
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    sizes = (8192,) if device.type == "cuda" else (512,) if args.tiny else (2048, 4096)
    peak = matmul_peak(device=str(device), dtype=peak_dtype, sizes=sizes)
    print(f"{name}: {peak_dtype} matmul peak {peak:.0f} GFLOP/s", flush=True)
    images, masks = scenes(args.batch, args.size)
    rows = []
    for model_name in () if args.skip_train else ("fcn32s", "fcn8s"):
        flop_model = build_model(model_name, NUM_CLASSES, width=args.width).to(device)
        gflop = step_gflop(flop_model, args.size, NUM_CLASSES) * args.batch
        del flop_model
        for amp in ("bf16", "none"):
            result = train(model_name, args, device, amp, images, masks)
            result.update(name=model_name, amp=amp, mfu=gflop / result["step_s"] / peak)
            rows.append(result)
            print(f"train {model_name} {amp}: {result['images_per_s']:.1f} img/s, "
                  f"MFU {result['mfu']:.1%}, loss {result['first_loss']:.3f} -> "
                  f"{result['last_loss']:.3f}", flush=True)  # fmt: skip
    # FCN-8s whose score layers are off zero (trained here, or perturbed): varied masks.
    trained = rows[-1]["model"].eval() if rows else perturbed("fcn8s", args.width).to(device)
    pictures = mixed_images(args.images, (args.size, args.size * 3 // 4))
    fp32, fp32_rate = segment(trained, preprocess.TORCHVISION, pictures, 8, "none", device)
    bf16, bf16_rate = segment(trained, preprocess.TORCHVISION, pictures, 8, "bf16", device)
    agreement = float(np.mean([(a == b).mean() for a, b in zip(fp32, bf16, strict=True)]))
    print(f"segment: fp32 {fp32_rate:.1f} img/s, bf16 {bf16_rate:.1f} img/s, "
          f"bf16 agrees on {agreement:.4%} of pixels", flush=True)  # fmt: skip
    if args.export:
        small = perturbed("fcn8s", 0.125).to(device)
        export(Path(args.export), small, mixed_images(6, (96,)), device)
    report = table(args, name, peak, peak_dtype, rows, (fp32_rate, bf16_rate, agreement))
    print(report)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(report)
    losses_fall = all(r["last_loss"] < r["first_loss"] for r in rows)  # also: no rows
    return 0 if losses_fall else 1


def table(args, name, peak, peak_dtype, rows, segment_result) -> str:
    fp32_rate, bf16_rate, agreement = segment_result
    by = {(r["name"], r["amp"]): r for r in rows}
    lines = [
        f"# GPU benchmark: {name}",
        "",
        f"`benchmarks/gpu.py` on {name}, {time.strftime('%Y-%m-%d')}, torch {torch.__version__}.",
        f"Training: batch {args.batch} of {args.size}^2 synthetic images, width {args.width} "
        f"(1 = the paper's VGG16), Adam, DDP over a one-process "
        f"{'NCCL' if name != 'CPU' else 'gloo'} group, channels_last, {args.steps} timed steps. "
        f"MFU = step FLOPs (forward + backward, counted) / time / the {peak_dtype} matmul "
        f"peak ({peak / 1000:.1f} TFLOP/s measured here). fp32 rows have TF32 off.",
        "",
        "| model | bf16 ÷ fp32 speed | images/s bf16 | images/s fp32 | MFU bf16 | MFU fp32 "
        "| peak GiB bf16 | peak GiB fp32 | loss first → last (bf16) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ("fcn32s", "fcn8s") if rows else ():
        bf, fp = by[(model, "bf16")], by[(model, "none")]
        lines.append(
            f"| {model} | {bf['images_per_s'] / fp['images_per_s']:.2f}x "
            f"| {bf['images_per_s']:.1f} | {fp['images_per_s']:.1f} | {bf['mfu']:.1%} "
            f"| {fp['mfu']:.1%} | {bf['peak_gib']:.1f} | {fp['peak_gib']:.1f} "
            f"| {bf['first_loss']:.3f} → {bf['last_loss']:.3f} |"
        )
    lines += [
        "",
        f"Segment batch function (`fcn.engine.inference.predict` with the confidence statistics, "
        f"FCN-8s, {args.images} images of two sizes, equal sizes batched by 8, each batch "
        f"shape run once untimed first): bf16 ÷ fp32 speed "
        f"{bf16_rate / fp32_rate:.2f}x; fp32 {fp32_rate:.1f} images/s, bf16 {bf16_rate:.1f} "
        f"images/s; bf16 masks equal fp32 masks on {agreement:.4%} of pixels.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
