"""Ingest throughput versus a plain parallel copy of the same objects, and driver memory.

    python benchmarks/ingest.py [--images 100] [--scale 10] [--store s3|local]

On one store (a moto S3 server started here, or a local directory), with one Ray instance:
  1. copy: read every source object (image + mask) and write it to another prefix, with a
     thread pool (what any data mover would do);
  2. ingest: `fcn.data.ingest.run` over the same objects (read, full decode, checks, Parquet).
Throughput is reported in MB/s of source bytes and images/s; the ratio ingest/copy is the
headline (goal >= 0.5). Then the driver's peak RSS for 1x and `scale`x the input, each
driver in its own process connected to the same Ray instance (goal: <= 1.2x growth).
Prints a table and writes results/ingest.md. Timings depend on the machine: compare ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import start_s3_server, stop_server, write_report  # noqa: E402
from fcn.runtime import LOCAL_RAY_ENV  # noqa: E402

for key, value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(key, value)

from fcn import storage  # noqa: E402
from fcn.data import synthetic  # noqa: E402

# Runs in a fresh process: the driver whose peak RSS we measure.
DRIVER = """
import json, sys, time
from fcn.config import IngestConfig
from fcn.data.ingest import check_config, run
config = IngestConfig(voc=sys.argv[1], output=sys.argv[2], voc_splits=("trainval",))
start = time.perf_counter()
summary = run(check_config(config))
print("RESULT " + json.dumps({"seconds": time.perf_counter() - start,
                              "written": summary.written, "rejected": summary.rejected}))
"""


def make_voc(local: Path, images: int, copies: int, seed: int) -> Path:
    """A VOC tree with `images` x `copies` ids (copies reuse the same bytes under new ids)."""
    base = local / "base"
    if not base.exists():
        synthetic.generate(voc=base, num_images=images, seed=seed)
    root = local / f"voc_x{copies}"
    ids = (base / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()
    all_ids = []
    for c in range(copies):
        for image_id in ids:
            new = f"{image_id}_{c:02d}" if copies > 1 else image_id
            for sub, ext in (("JPEGImages", ".jpg"), ("SegmentationClass", ".png")):
                dst = root / sub / f"{new}{ext}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(base / sub / f"{image_id}{ext}", dst)
            all_ids.append(new)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in all_ids))
    return root


def upload(local: Path, uri: str, threads: int = 16) -> str:
    files = [p for p in sorted(local.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(threads) as pool:
        list(
            pool.map(
                lambda p: storage.write_bytes(
                    storage.join(uri, p.relative_to(local).as_posix()), p.read_bytes()
                ),
                files,
            )
        )
    return uri


def plain_copy(src: str, dst: str, threads: int = 16) -> tuple[float, int, int]:
    """Read every image and mask under `src` and write it under `dst`; (s, bytes, images)."""
    files = [
        f
        for f in storage.list_files(src, extensions=(".jpg", ".png"))
        if "/JPEGImages/" in f.uri or "/SegmentationClass/" in f.uri
    ]
    start = time.perf_counter()

    def copy(info):
        # One GET and one PUT per object: the least any mover can do.
        fs, path = storage.filesystem(info.uri)
        data = fs.cat_file(path)
        out_fs, out_path = storage.filesystem(
            storage.join(dst, storage.relative_key(src, info.uri))
        )
        out_fs.pipe_file(out_path, data)
        return len(data)

    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(copy, files))
    images = sum("/JPEGImages/" in f.uri for f in files)
    return time.perf_counter() - start, total, images


def run_driver(voc: str, output: str, ray_address: str) -> tuple[dict, float]:
    """One ingest in its own driver process; (its result, its peak RSS in MiB)."""
    env = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, voc, output],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"ingest driver failed ({status}):\n{out[-3000:]}")
    result = json.loads(next(line[7:] for line in out.splitlines() if line.startswith("RESULT ")))
    return result, usage.ru_maxrss / 1024  # Linux: KiB


def ingest_in_process(voc: str, output: str) -> tuple[float, dict]:
    from fcn.config import IngestConfig
    from fcn.data.ingest import check_config, run

    start = time.perf_counter()
    summary = run(check_config(IngestConfig(voc=voc, output=output, voc_splits=("trainval",))))
    return time.perf_counter() - start, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=100, help="images in the 1x input")
    p.add_argument("--scale", type=int, default=10, help="the larger input is this many x")
    p.add_argument("--store", choices=("s3", "local"), default="s3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "results" / "ingest.md"))
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="fcn-bench-ingest-"))
    moto = None
    try:
        if args.store == "s3":
            moto, base = start_s3_server("bench")
        else:
            base = str(work / "store")
        print(f"generating {args.images} VOC-size images (+ {args.scale}x copies) ...", flush=True)
        src1 = upload(make_voc(work, args.images, 1, args.seed), f"{base}/src1")
        srcn = upload(make_voc(work, args.images, args.scale, args.seed), f"{base}/src{args.scale}")

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
        address = ray.get_runtime_context().gcs_address
        # Throughput is measured with warm workers (this process's job); worker start-up,
        # paid once per job, shows in the fresh-driver wall time instead.
        ingest_in_process(src1, f"{base}/warmup")

        rows = []
        for name, src in (("1x", src1), (f"{args.scale}x", srcn)):
            copy_s, nbytes, nimages = plain_copy(src, f"{base}/copy-{name}")
            ingest_s, summary = ingest_in_process(src, f"{base}/out-{name}")
            assert summary.written == nimages and summary.rejected == 0, summary
            result, rss = run_driver(src, f"{base}/job-{name}", address)
            mb = nbytes / 1e6
            rows.append(
                {
                    "input": name,
                    "images": nimages,
                    "MB": mb,
                    "copy_MBps": mb / copy_s,
                    "ingest_MBps": mb / ingest_s,
                    "copy_img_s": nimages / copy_s,
                    "ingest_img_s": nimages / ingest_s,
                    "ratio": copy_s / ingest_s,
                    "job_s": result["seconds"],
                    "driver_rss_MiB": rss,
                }
            )
        ray.shutdown()
    finally:
        if moto is not None:
            stop_server(moto)
        shutil.rmtree(work, ignore_errors=True)

    growth = rows[1]["driver_rss_MiB"] / rows[0]["driver_rss_MiB"]
    header = (
        "| input | images | MB | copy MB/s | ingest MB/s | copy img/s | ingest img/s "
        "| ingest/copy | fresh job s | driver peak RSS MiB |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['input']} | {r['images']} | {r['MB']:.1f} | {r['copy_MBps']:.1f} "
            f"| {r['ingest_MBps']:.1f} | {r['copy_img_s']:.0f} | {r['ingest_img_s']:.0f} "
            f"| {r['ratio']:.2f}x | {r['job_s']:.1f} | {r['driver_rss_MiB']:.0f} |"
        )
    verdict = (
        f"ingest/copy throughput at {rows[1]['input']}: {rows[1]['ratio']:.2f}x (goal >= 0.5x); "
        f"driver peak RSS {rows[0]['input']} -> {rows[1]['input']}: {growth:.2f}x "
        f"(goal <= 1.2x)"
    )
    store_name = "moto S3 server on loopback" if args.store == "s3" else "local disk"
    text = "\n".join(
        [
            "# Ingest benchmark",
            "",
            f"Store: {store_name}, {os.cpu_count()} CPUs, synthetic VOC-size images "
            "(200-500 px, JPEG + palette PNG).",
            "Copy = thread-pool read + write of the same objects on the same store. Ingest = full",
            "decode and checks of every image and mask, masks re-encoded, Parquet shards written,",
            "with warm Ray workers. Fresh job = the same ingest as a new driver process (own Ray",
            "job: worker start-up and imports included), whose peak RSS is the driver memory.",
            "",
            *lines,
            "",
            verdict,
            "",
        ]
    )
    write_report(text, args.out)


if __name__ == "__main__":
    main()
