"""Training throughput: Ray Train (1 and 2 workers) against a plain PyTorch loop, in one run.

    python benchmarks/train.py [--size 224] [--steps 12] [--threads 2] [--model fcn32s]
                               [--gpu] [--output results/train.md]

Same model, data (crops of synthetic images from Parquet), batch (1 image per worker per
step) and total threads in every case. Prints images/s of each, the ratios (goals: Ray Train
1 worker >= 0.9x the plain loop; 2 workers vs 1 reported), and the achieved GFLOP/s of a
training step (FLOPs counted by torch's FlopCounterMode) as a share of the float32 matmul peak
measured here in the same run (goal >= 65%). Seconds depend on the machine; compare ratios.
Re-execs itself with the allocator settings of docs/environment.md (glibc reads them at
start).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchmarks.common import matmul_peak, step_gflop  # noqa: E402
from fcn.engine.models import build_model  # noqa: E402
from fcn.runtime import ALLOCATOR_ENV as MALLOC_ENV  # noqa: E402
from fcn.runtime import LOCAL_RAY_ENV as RAY_ENV  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=224, help="crop size (images are this size)")
    p.add_argument("--steps", type=int, default=12, help="timed steps (after 2 warm-up)")
    p.add_argument("--threads", type=int, default=2, help="threads in total (CPU)")
    p.add_argument("--model", default="fcn32s")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (and for the loop)")
    p.add_argument("--output", default=str(REPO / "results" / "train.md"))
    return p.parse_args(argv)


def plain_loop(args, data: str, device: str) -> float:
    """images/s of a plain PyTorch loop around the same step function (fcn.engine.step.train_step),
    decode/crop, model, loss and optimizer as the Ray Train workers."""
    import pyarrow.parquet as pq
    import torch

    from fcn.data.transforms import TrainTransform
    from fcn.engine import optim, step
    from fcn.engine.models import build_model, preprocessing_for

    torch.set_num_threads(args.threads)
    model, bare = step.prepare(build_model(args.model, 21), torch.device(device))
    transform = TrainTransform(preprocessing_for(args.model), crop_size=args.size)
    recipe = optim.Recipe("sgd", 1e-4, 0.9, 5e-4, 1, "mean")
    optimizer = optim.build_optimizer(bare, recipe)
    table = pq.read_table(os.path.join(data, "train"))
    images, masks = table.column("image").to_pylist(), table.column("mask").to_pylist()
    seconds = 0.0
    for i in range(args.steps + 2):
        tic = time.perf_counter()
        batch = transform({"image": [images[i % len(images)]], "mask": [masks[i % len(masks)]]})
        image, mask = torch.from_numpy(batch["image"]), torch.from_numpy(batch["mask"])
        step.train_step(model, optimizer, [(image, mask)], recipe)  # returns a float: synced
        if i >= 2:
            seconds += time.perf_counter() - tic
    return args.steps / seconds


def ray_train(args, data: str, workers: int, root: str) -> float:
    """images/s as measured inside the Ray Train loop (the training driver reports
    `images_per_s`)."""
    from fcn.config import TrainConfig
    from fcn.training import driver as train

    threads = max(1, args.threads // workers)
    config = TrainConfig(
        data=data, model=args.model, storage=os.path.join(root, "runs"),
        name=f"bench-{workers}w", registered_model="", preset="paper", batch_size=workers,
        crop_size=args.size, iterations=args.steps + 2, eval_every=args.steps + 2,
        val_limit=1, val_images_logged=0, workers=workers, cpus_per_worker=threads,
        threads=threads, gpu=args.gpu, max_failures=0,
    )  # fmt: skip
    return float(train.run(train.validate(config)).metrics["images_per_s"])


def main(argv=None) -> int:
    args = parse_args(argv)
    if any(os.environ.get(k) != v for k, v in {**MALLOC_ENV, **RAY_ENV}.items()):
        os.execve(
            sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV, **RAY_ENV}
        )
    import ray
    from helpers_data import write_split

    from fcn.runtime import init_ray

    device = "cuda" if args.gpu else "cpu"
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    context = f"Measured {when} on {os.cpu_count()} CPUs, load average {load:.1f} at the start."
    root = tempfile.mkdtemp(prefix="fcn-bench-train-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
    data = os.path.join(root, "data")
    write_split(data, "train", 8, size=(args.size, args.size), classes=(1, 2, 3))
    write_split(data, "val", 1, size=(args.size, args.size), classes=(1, 2, 3), seed=1)

    peak = matmul_peak(args.threads, device)
    flops = step_gflop(build_model(args.model, 21), args.size, 21) * 1e9
    loop = plain_loop(args, data, device)
    init_ray(num_cpus=args.threads + 2)  # the jobs' own start-up: workers get ALLOCATOR_ENV
    one = ray_train(args, data, 1, root)
    two = ray_train(args, data, 2, root) if args.gpu is False or _gpus() >= 2 else float("nan")
    ray.shutdown()

    def share(images_per_s):
        return flops * images_per_s / 1e9 / peak

    rows = [
        ("plain PyTorch loop", loop, 1.0, share(loop)),
        ("Ray Train, 1 worker", one, one / loop, share(one)),
        ("Ray Train, 2 workers", two, two / loop, share(two)),
    ]
    lines = [
        f"# Training throughput ({args.model}, {args.size}x{args.size} crops, batch 1/worker, "
        f"{args.threads} threads in total, {device})",
        "",
        f"matmul peak measured in this run: {peak:.0f} GFLOP/s; one training step: "
        f"{flops / 1e9:.0f} GFLOP per image (forward + backward, FlopCounterMode).",
        "",
        "| setup | images/s | vs plain loop | GFLOP/s share of matmul peak |",
        "|---|---|---|---|",
        *[f"| {n} | {s:.3f} | {r:.2f}x | {p:.0%} |" for n, s, r, p in rows],
        "",
        f"Ray Train 1 worker / plain loop: {one / loop:.2f} (goal >= 0.9); "
        f"2 workers / 1 worker: {two / one:.2f}.",
        "",
        context,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text)
    print(f"written to {args.output}")
    return 0


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


if __name__ == "__main__":
    sys.exit(main())
