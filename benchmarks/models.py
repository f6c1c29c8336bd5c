"""A Table-1-like comparison of the FCN models and torchvision's fcn_resnet50, in one run.

    python benchmarks/models.py [--size 500] [--repeats 3] [--threads 2] [--device cpu]
                                [--channels-last] [--output results/models.md]

For each model at size x size (the paper's Table 1 uses 500 x 500): parameters (learnable,
and all including the fixed bilinear upsampling weights), forward GFLOP (counted on the meta
device: machine-independent), forward seconds (eval mode, no_grad, batch 1, after a warm-up;
the models take turns, and the best of `repeats` turns is kept, so that other load on a shared
machine hits every model alike), the ratio of that time to FCN-8s and to fcn_resnet50 (both
measured here, in the same run), and the published numbers from docs/paper.md (mean IU, Table 1
forward time on a K40 GPU). Published fcn_resnet50 mIoU is torchvision's (COCO val2017,
VOC labels), a different benchmark. Random weights: speed does not depend on them.
Prints a table and writes results/models.md. Compare ratios; seconds depend on the machine.

Allocator: with glibc defaults every FCN forward takes ~440k page faults and is ~25% slower and
noisy (docs/environment.md). This script re-execs itself with fcn.runtime.ALLOCATOR_ENV set
(unless --no-reexec; glibc reads them only at process start, so they cannot be set from
inside).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import forward_gflop, reexec_with_allocator_settings  # noqa: E402
from fcn.runtime import ALLOCATOR_ENV as MALLOC_ENV  # noqa: E402

# docs/paper.md: (reference-repo seg11valid mean IU, paper mean IU and where, Table 1 ms on a K40).
PUBLISHED = {
    "fcn32s": ("63.6", "59.4 (seg11valid)", "210 (FCN-VGG16)"),
    "fcn16s": ("65.0", "62.4 (seg11valid)", ""),
    "fcn8s": ("65.5", "62.7 (seg11valid)", "~175"),
    "fcn8s-atonce": ("65.4", "", ""),
    "fcn-alexnet": ("48.0", "39.8 (VOC11 val, Table 1)", "50"),
    "fcn-googlenet": ("", "42.5 (VOC11 val, Table 1)", "59"),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=500, help="input height and width")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per model")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    parser.add_argument("--output", default=str(REPO / "results" / "models.md"))
    parser.add_argument("--no-reexec", action="store_true", help="keep the current allocator")
    return parser.parse_args(argv)


def build(name: str, device):
    import torchvision

    from fcn.engine.models import build_model

    if name == "fcn_resnet50":
        model = torchvision.models.segmentation.fcn_resnet50(
            weights=None, weights_backbone=None, num_classes=21, aux_loss=False
        )
    else:
        model = build_model(name, num_classes=21)
    return model.eval().to(device)


def forward_seconds(model, x) -> float:
    import torch

    with torch.no_grad():
        start = time.perf_counter()
        out = model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    out = out["out"] if isinstance(out, dict) else out
    assert out.shape[-2:] == x.shape[-2:], out.shape
    return seconds


def count_gflop(name: str, size: int) -> float:
    """Forward GFLOP from the shapes alone (meta device: no memory, no compute)."""
    import torch

    with torch.device("meta"):
        return forward_gflop(build(name, "meta"), size)


def main(argv=None) -> None:
    args = parse_args(argv)
    reexec_with_allocator_settings(args.no_reexec)
    import torch
    import torchvision

    from fcn.engine.models import MODEL_NAMES

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    x = torch.randn(1, 3, args.size, args.size, device=device).to(memory_format=memory_format)

    names = (*MODEL_NAMES, "fcn_resnet50")
    models = {name: build(name, device).to(memory_format=memory_format) for name in names}
    times = {name: [] for name in names}
    for turn in range(args.repeats + 1):  # turn 0 is the warm-up
        for name, model in models.items():
            seconds = forward_seconds(model, x)
            if turn:
                times[name].append(seconds)
        print(f"turn {turn}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items() if t))
    rows = []
    for name, model in models.items():
        rows.append(
            {
                "name": name,
                "learnable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "total": sum(p.numel() for p in model.parameters()),
                "gflop": count_gflop(name, args.size),
                "seconds": min(times[name]),
                "spread": max(times[name]) / min(times[name]),
            }
        )
    del models
    gc.collect()

    by_name = {row["name"]: row for row in rows}
    resnet_miou = torchvision.models.segmentation.FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1
    resnet_miou = resnet_miou.meta["_metrics"]["COCO-val2017-VOC-labels"]["miou"]
    header = (
        "| model | learnable params | all params | GFLOP | forward s (max/min) | GFLOP/s "
        "| vs FCN-8s | vs fcn_resnet50 | ref. repo mean IU (seg11valid) | paper mean IU "
        "| paper ms (K40) |"
    )
    lines = [header, "|" + "---|" * 11]
    for row in rows:
        ref, paper, k40 = PUBLISHED.get(row["name"], ("", f"{resnet_miou} (COCO-VOC, tv)", ""))
        lines.append(
            f"| {row['name']} | {row['learnable'] / 1e6:.1f}M | {row['total'] / 1e6:.1f}M "
            f"| {row['gflop']:.0f} | {row['seconds']:.3f} ({row['spread']:.2f}x) "
            f"| {row['gflop'] / row['seconds']:.0f} "
            f"| {row['seconds'] / by_name['fcn8s']['seconds']:.2f}x "
            f"| {row['seconds'] / by_name['fcn_resnet50']['seconds']:.2f}x | {ref} | {paper} "
            f"| {k40} |"
        )
    allocator = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in MALLOC_ENV)
    where = (f"{args.device}, {args.threads} threads" if device.type == "cpu" else str(device)) + (
        ", channels_last" if args.channels_last else ""
    )
    report = [
        "# Model benchmark (Table 1 style)",
        "",
        f"Input 1x3x{args.size}x{args.size}, 21 classes, random weights, eval + no_grad, "
        f"best of {args.repeats} turns after a warm-up (models take turns; max/min shows "
        f"the noise); {where}; {allocator}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}.",
        "Learnable params leave out the fixed bilinear upsampling (Caffe lr_mult 0), as the "
        "paper's counts do (VGG16 134M, AlexNet 57M, GoogLeNet 6M; torchvision's GoogLeNet has "
        "3x3 instead of 5x5 kernels in one inception branch, hence 5.6M). Published numbers "
        "are from docs/paper.md; the paper timed a K40 GPU, so compare ratios, not seconds.",
        "",
        *lines,
        "",
    ]
    text = "\n".join(report)
    print()
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
