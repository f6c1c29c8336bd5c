"""Segment job throughput versus a plain forward loop, achieved GFLOP/s, and memory growth.

    python benchmarks/segment.py [--images 8] [--size 224] [--model fcn32s] [--scale 10]

One process, one Ray instance (all CPUs), one allocator setting (re-executed with the tuned
glibc settings if they are missing, so both sides get them):
  1. peak: the faster of a float32 matmul (MKL) and a VGG-shaped 3x3 convolution (oneDNN)
     on the same threads, in GFLOP/s (the machine's ceiling; both are printed);
  2. plain loop: the model's forward + argmax on the same decoded images, same threads and
     batch size, nothing else (the upper bound for the job);
  3. job: `jobs/segment.py` as its own driver process on the same images (list, read, decode,
     forward, mask encode, atomic write, manifest), for each actor layout: one actor with all
     threads and batches of equal-size images, and one-image batches over one-thread actors.
     Steady images/s = images between the first and last batch's completion / that time
     (actor start-up and model load excluded; they show in the whole-job figure);
  4. GFLOP/s inside the actors = model FLOPs x images / summed forward seconds (manifest),
     over all batches and over the steady ones (each actor's first batch left out: its
     forward pays oneDNN's primitive creation and the page faults of its first buffers),
     and the per-stage table: seconds per image in read, decode, the model actor and its
     forward, encode, write, and the share of the model actor's busy time spent in forward;
  5. peak RSS of the driver and of the actors at 1x and `scale`x the images.
Prints a table and writes results/segment.md. Timings depend on the machine and its load:
compare the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import (  # noqa: E402
    conv_peak,
    forward_gflop,
    matmul_peak,
    save_checkpoint,
    write_report,
)
from fcn.runtime import ALLOCATOR_ENV, LOCAL_RAY_ENV  # noqa: E402

if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):  # glibc reads them at start
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})
for key, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from fcn import storage  # noqa: E402
from fcn.data import synthetic  # noqa: E402
from fcn.engine import images  # noqa: E402
from fcn.engine.models import build_model, preprocessing_for  # noqa: E402
from fcn.engine.models.preprocess import normalize  # noqa: E402

# The job as its own driver (the measured RSS is this process's).
DRIVER = """
import json, sys
from jobs.segment import main
code = main(sys.argv[1:])
# VmHWM, not ru_maxrss: the latter keeps the forked parent's peak across exec.
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print("RESULT " + json.dumps({"rc": code, "rss_MiB": int(hwm) / 1024}))
"""


def plain_loop(model, spec, decoded: list[np.ndarray], batch: int, threads: int) -> float:
    """Seconds for forward + argmax over `decoded`, batches of `batch`, tuned like the actors."""
    torch.set_num_threads(threads)
    model = model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        model(normalize(decoded[0][None], spec).contiguous(memory_format=torch.channels_last))
        start = time.perf_counter()
        for i in range(0, len(decoded), batch):
            x = normalize(np.stack(decoded[i : i + batch]), spec)
            model(x.contiguous(memory_format=torch.channels_last)).argmax(1)
        return time.perf_counter() - start


class ActorPeak:
    """Highest private RSS (RssAnon + RssFile) of the Predictor actor processes, polled every
    0.5 s while a job runs. Not VmHWM: that also counts the object store's shared pages the
    actor has mapped (its input blocks), which belong to the node's store, not the actor."""

    def __init__(self):
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        while not self._stop.wait(0.5):
            for entry in Path("/proc").iterdir():
                try:
                    if "Predictor" not in (entry / "cmdline").read_text():
                        continue
                    fields = dict(
                        line.split(":", 1) for line in (entry / "status").read_text().splitlines()
                    )
                    private = sum(int(fields[k].split()[0]) for k in ("RssAnon", "RssFile"))
                    self.peak_kib = max(self.peak_kib, private)
                except OSError:
                    continue


def run_job(args: list[str], ray_address: str) -> tuple[dict, list[dict], float, float]:
    """(result, manifest rows, driver peak RSS MiB, actor peak RSS MiB) of one job run."""
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    with ActorPeak() as actors:
        done = subprocess.run(
            [sys.executable, "-c", DRIVER, *args], env=env, cwd=REPO, capture_output=True, text=True
        )
    out = done.stdout
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"segment job failed:\n{out[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(lines[0][7:])
    uri = next(line.split()[-1] for line in out.splitlines() if line.startswith("manifest:"))
    rows = pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pylist()  # fcn.nightly.manifest
    return result, rows, result["rss_MiB"], actors.peak_kib / 1024


STAGES = ("read", "decode", "model", "forward", "encode", "write")


def steady_rate(rows: list[dict], actors: int) -> float:
    """Images/s between the first and the last batch completion (start-up excluded); with a
    single batch, images / the actors' busy seconds (read to write) instead."""
    done = [r for r in rows if r["status"] == "ok"]
    times = sorted({r["time"] for r in done})
    if len(times) < 2:
        return len(done) / (sum(r["seconds"] for r in done) / actors)
    first_batch = sum(r["time"] == times[0] for r in done)
    return (len(done) - first_batch) / (times[-1] - times[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="images in the 1x input (>= 2 batches)")
    p.add_argument("--size", type=int, default=224, help="image side (all equal, like a camera)")
    p.add_argument("--model", default="fcn32s")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--scale", type=int, default=10, help="the memory run uses this many x")
    p.add_argument("--trials", type=int, default=3, help="job runs per layout (median, spread)")
    p.add_argument("--out", default=str(REPO / "results" / "segment.md"))
    args = p.parse_args()
    threads = os.cpu_count() or 1
    load_start = os.getloadavg()[0]

    import ray

    work = Path(tempfile.mkdtemp(prefix="fcn-bench-segment-"))
    try:
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=21).eval()
        ckpt = str(work / "checkpoint")
        save_checkpoint(model, args.model, ckpt)
        print(f"generating {args.images} x {args.scale} images of {args.size}^2 ...", flush=True)
        n = args.images * args.scale
        synthetic.generate(
            unlabeled=work / "all", num_images=n, min_size=args.size, max_size=args.size
        )
        big = work / "all"
        small = work / "small"
        for info in storage.list_files(str(big), images.IMAGE_EXTENSIONS)[: args.images]:
            dst = small / storage.relative_key(str(big), info.uri)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(info.uri, dst)
        files = storage.list_files(str(small), images.IMAGE_EXTENSIONS)
        decoded = [images.decode_image(storage.read_bytes(f.uri), 10**8) for f in files]

        matmul, conv = matmul_peak(threads), conv_peak(threads)
        gflop = forward_gflop(model, args.size)
        plain_s = plain_loop(
            model, preprocessing_for(args.model), decoded, args.batch_size, threads
        )
        plain_rate = len(decoded) / plain_s
        print(
            f"peak: matmul {matmul:.0f}, conv {conv:.0f} GFLOP/s; plain loop "
            f"{plain_rate:.3f} img/s",
            flush=True,
        )

        ray.init(num_cpus=threads, include_dashboard=False, runtime_env={"env_vars": ALLOCATOR_ENV})
        address = ray.get_runtime_context().gcs_address
        # The actors reserve half the CPUs and the read/encode stages (IO_CPUS each) the rest:
        # an actor reserving every CPU would leave those stages none (the pipeline would
        # stall). Torch threads are set apart from the reservation: the stages mostly wait.
        layouts = {
            f"1 actor x {threads} threads, batch {args.batch_size}": [
                "--batch-size", str(args.batch_size), "--concurrency", "1",
                "--cpus-per-actor", str(threads / 2), "--threads", str(threads),
            ],
            f"{threads} actors x 1 thread, batch 1": [
                "--batch-size", "1", "--concurrency", str(threads),
                "--cpus-per-actor", str(0.5), "--threads", "1",
            ],
        }  # fmt: skip
        rows, stages = [], []
        for name, extra in layouts.items():
            trials = []
            for trial in range(args.trials):
                out = str(work / f"out-{len(rows)}-{trial}")
                common = ["--input", str(small), "--output", out, "--model", ckpt]
                started = time.perf_counter()
                _, manifest_rows, rss, actor_rss = run_job(
                    common + ["--no-class-counts"] + extra, address
                )
                wall = time.perf_counter() - started
                ok = [r for r in manifest_rows if r["status"] == "ok"]
                assert len(ok) == len(decoded), manifest_rows
                actors = int(extra[extra.index("--concurrency") + 1])
                trials.append(
                    (steady_rate(manifest_rows, actors), len(ok) / wall, ok, rss, actor_rss)
                )
            steady = sorted(t[0] for t in trials)
            median = trials[[t[0] for t in trials].index(steady[len(steady) // 2])]
            ok = median[2]
            forward_s = sum(r["forward_seconds"] for r in ok)
            firsts = sorted({r["time"] for r in ok})[:actors]  # each actor's first batch
            steady_ok = [r for r in ok if r["time"] not in firsts] or ok
            steady_forward_s = sum(r["forward_seconds"] for r in steady_ok)
            stage = {s: sum(r[f"{s}_seconds"] or 0 for r in ok) / len(ok) for s in STAGES}
            stage["forward share"] = forward_s / sum(r["model_seconds"] for r in ok)
            stages.append((name, stage))
            rows.append(
                {
                    "layout": name,
                    "steady": steady[len(steady) // 2],
                    "spread": (steady[0], steady[-1]),
                    "whole": median[1],
                    "gflops": gflop * len(ok) / (forward_s / actors),  # all actors together
                    "steady_gflops": gflop * len(steady_ok) / (steady_forward_s / actors),
                    "rss": median[3],
                    "actor_rss": median[4],
                }
            )
            print(rows[-1], stage, flush=True)
        # Memory growth: the first layout again on scale x the images.
        out = str(work / "out-big")
        common = ["--input", str(big), "--output", out, "--model", ckpt, "--no-class-counts"]
        _, big_rows, big_rss, big_actor_rss = run_job(
            common + layouts[next(iter(layouts))], address
        )
        assert sum(r["status"] == "ok" for r in big_rows) == n
        ray.shutdown()
        # Best of before and after: on a shared machine, load moves between measurements.
        matmul, conv = max(matmul, matmul_peak(threads)), max(conv, conv_peak(threads))
        peak = max(matmul, conv)
        plain_s = min(
            plain_s,
            plain_loop(model, preprocessing_for(args.model), decoded, args.batch_size, threads),
        )
        plain_rate = len(decoded) / plain_s
    finally:
        shutil.rmtree(work, ignore_errors=True)

    first = rows[0]
    lines = [
        "| run | steady img/s (median; min-max) | vs plain loop | whole job img/s "
        "| GFLOP/s in actors (all; steady) "
        "| of peak (all; steady) | driver RSS MiB | actor RSS MiB |",
        "|" + "---|" * 8,
        f"| plain loop ({threads} threads, batch {args.batch_size}) | {plain_rate:.3f} | 1.00x "
        f"| | {gflop * plain_rate:.0f} | {gflop * plain_rate / peak:.0%} | | |",
    ]
    for r in rows:
        lines.append(
            f"| job: {r['layout']} | {r['steady']:.3f} ({r['spread'][0]:.3f}-{r['spread'][1]:.3f}) "
            f"| {r['steady'] / plain_rate:.2f}x "
            f"| {r['whole']:.3f} | {r['gflops']:.0f}; {r['steady_gflops']:.0f} "
            f"| {r['gflops'] / peak:.0%}; {r['steady_gflops'] / peak:.0%} "
            f"| {r['rss']:.0f} | {r['actor_rss']:.0f} |"
        )
    lines += [
        "",
        "| layout | " + " | ".join(f"{s} s/img" for s in STAGES) + " | forward share of actor |",
        "|" + "---|" * (len(STAGES) + 2),
    ]
    for name, stage in stages:
        cells = " | ".join(f"{stage[s]:.3f}" for s in STAGES)
        lines.append(f"| {name} | {cells} | {stage['forward share']:.0%} |")
    growth = big_rss / first["rss"]
    actor_growth = big_actor_rss / first["actor_rss"] if first["actor_rss"] else float("nan")
    verdict = [
        f"Job/plain steady throughput ({first['layout']}): {first['steady'] / plain_rate:.2f}x "
        "(goal >= 0.85x).",
        f"GFLOP/s inside the actors ({first['layout']}): {first['steady_gflops'] / peak:.0%} "
        f"in steady batches, {first['gflops'] / peak:.0%} over all, of the {peak:.0f} GFLOP/s "
        f"peak (matmul {matmul:.0f}, 3x3 convolution {conv:.0f}) (goal >= 80%).",
        f"Peak RSS {args.images} -> {n} images: driver {first['rss']:.0f} -> {big_rss:.0f} MiB "
        f"({growth:.2f}x), actor {first['actor_rss']:.0f} -> {big_actor_rss:.0f} MiB "
        f"({actor_growth:.2f}x) (goal <= 1.2x).",
    ]
    conditions = (
        f"Load average (1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end, on {threads} cores: above {threads} other processes shared the CPUs. "
        + ("CUDA was available but this runs on CPU." if torch.cuda.is_available() else "No GPU.")
    )
    text = "\n".join(
        [
            "# Segment benchmark",
            "",
            f"{threads} CPUs; model {args.model} (21 classes, {gflop:.0f} GFLOP per "
            f"{args.size}x{args.size} forward, pad 100 included); {args.images} synthetic "
            f"{args.size}^2 images (JPEG/PNG), local disk; tuned glibc allocator on both sides.",
            "Plain loop = forward + argmax on the already decoded images. Job = jobs/segment.py",
            "as its own driver: list, read, decode, forward, encode, atomic write, manifest.",
            "Steady = between the first and last batch completion (start-up excluded); whole job",
            "= images / driver wall time including actor start-up and model load.",
            "",
            *lines,
            "",
            *verdict,
            "",
            conditions,
            "",
        ]
    )
    write_report(text, args.out)


if __name__ == "__main__":
    main()
