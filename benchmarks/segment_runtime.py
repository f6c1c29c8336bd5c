"""The segment job's model actor on PyTorch versus on ONNX Runtime, on this machine's CPUs.

    python benchmarks/segment_runtime.py [--model fcn8s] [--size 224] [--images 8] [--trials 5]

One process, both runtimes side by side: the actor class itself (`fcn.nightly.predictor.
Predictor`, `--runtime torch` and `--runtime onnxruntime`, same checkpoint, same threads) runs
its per-batch work (preprocessing, forward, argmax, confidence statistics) on the same decoded
images, in batches of `--batch-size`; the trials alternate the runtimes, so load on a shared
machine falls on both alike. Reported: images/s (median of the trials, min-max), GFLOP/s as a
share of the in-run peak (the faster of an fp32 matmul and a VGG-shaped 3x3 convolution,
benchmarks/common.py, best of before and after), the ratio ONNX Runtime / PyTorch, and the
share of pixels whose masks agree. Writes results/onnx.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import (  # noqa: E402
    conv_peak,
    forward_gflop,
    matmul_peak,
    reexec_with_allocator_settings,
    save_checkpoint,
    write_report,
)

reexec_with_allocator_settings()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fcn.config import SegmentConfig  # noqa: E402
from fcn.engine.models import build_model  # noqa: E402
from fcn.nightly.predictor import Predictor  # noqa: E402

RUNTIMES = ("torch", "onnxruntime")


def timed(actor: Predictor, batches: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """(seconds, class maps) of the actor's work on every batch."""
    started = time.perf_counter()
    maps = [actor._classify(stack)[0] for stack in batches]
    return time.perf_counter() - started, maps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="fcn8s")
    p.add_argument("--size", type=int, default=224, help="image side (all equal)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--out", default=str(REPO / "results" / "onnx.md"))
    args = p.parse_args()
    threads = os.cpu_count() or 1
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="fcn-bench-runtime-"))
    try:
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=21).eval()
        for module in model.modules():  # score layers start at zero: vary the argmax
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        ckpt = str(work / "checkpoint")
        save_checkpoint(model, args.model, ckpt)
        gflop = forward_gflop(model, args.size)
        rng = np.random.default_rng(0)
        decoded = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
        batches = [decoded[i : i + args.batch_size] for i in range(0, args.images, args.batch_size)]
        peaks = [matmul_peak(threads), conv_peak(threads)]
        actors = {}
        for runtime in RUNTIMES:
            settings = SegmentConfig(input="-", output="-", model=ckpt, runtime=runtime,
                                     threads=threads, batch_size=args.batch_size)  # fmt: skip
            actors[runtime] = Predictor(ckpt, settings)
            actors[runtime]._classify(batches[0])  # warm-up: kernels chosen, buffers touched
        seconds = {r: [] for r in RUNTIMES}
        maps = {}
        for trial in range(args.trials):
            order = RUNTIMES if trial % 2 == 0 else RUNTIMES[::-1]
            for runtime in order:
                spent, maps[runtime] = timed(actors[runtime], batches)
                seconds[runtime].append(spent)
            print({r: f"{args.images / s[-1]:.3f} img/s" for r, s in seconds.items()}, flush=True)
        peaks += [matmul_peak(threads), conv_peak(threads)]
        matmul, conv = max(peaks[0], peaks[2]), max(peaks[1], peaks[3])
        peak = max(matmul, conv)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    agree = np.mean(
        [(a == b).mean() for a, b in zip(maps["torch"], maps["onnxruntime"], strict=True)]
    )
    rates = {r: sorted(args.images / s for s in seconds[r]) for r in RUNTIMES}
    median = {r: statistics.median(v) for r, v in rates.items()}
    ratio = median["onnxruntime"] / median["torch"]
    lines = [
        "| actor runtime | images/s (median; min-max) | GFLOP/s | of in-run peak | vs PyTorch |",
        "|---|---|---|---|---|",
    ]
    for runtime in RUNTIMES:
        v = rates[runtime]
        lines.append(
            f"| {runtime} | {median[runtime]:.3f} ({v[0]:.3f}-{v[-1]:.3f}) "
            f"| {gflop * median[runtime]:.0f} | {gflop * median[runtime] / peak:.0%} "
            f"| {median[runtime] / median['torch']:.2f}x |"
        )
    # Each trial ran both runtimes back to back: their ratio sees the same load.
    paired = sorted(t / o for t, o in zip(seconds["torch"], seconds["onnxruntime"], strict=True))
    if paired[0] > 1 or paired[-1] < 1:
        faster = "ONNX Runtime" if paired[0] > 1 else "PyTorch"
        call = f"{faster} is faster here in every trial"
    else:
        call = "Neither is clearly faster here (the trials disagree)"
    verdict = (
        f"{call}: ONNX Runtime / PyTorch images/s = {ratio:.2f}x (medians); per trial, "
        f"both back to back, {statistics.median(paired):.2f}x ({paired[0]:.2f}-{paired[-1]:.2f}, "
        f"{args.trials} trials). Masks agree on {agree:.4%} of pixels."
    )
    conditions = (
        f"Load average (1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end, on {threads} cores."
    )
    text = "\n".join(
        [
            "# Segment actor: PyTorch vs ONNX Runtime (CPU)",
            "",
            f"{threads} CPUs, {threads} threads each; {args.model} (21 classes, full width, "
            f"{gflop:.0f} GFLOP per {args.size}x{args.size} forward, pad 100 included); "
            f"{args.images} images in batches of {args.batch_size}; the actor's own work per "
            "batch (preprocessing, forward, argmax, confidence statistics), "
            "`python benchmarks/segment_runtime.py`. Peak: the faster of an fp32 matmul "
            f"({matmul:.0f}) and a 3x3 convolution ({conv:.0f} GFLOP/s) in the same run.",
            "",
            *lines,
            "",
            verdict,
            "",
            conditions,
            "",
        ]
    )
    write_report(text, args.out)


if __name__ == "__main__":
    main()
