"""Planning cost of the segment job against the number of past nights (issue 16's goal:
365 nights / 1 night <= 1.2x in time and memory; 200k images with nothing to do <= 60 s).

    python benchmarks/segment_scale.py [--images 200000] [--s3-images 200000] [--nights 1 30 365]

Twice, on local disk (`--images`) and on an S3 server (`--s3-images`; 0 skips it): tiny
image objects and their masks, a state snapshot with every image done, and each simulated past
night's run manifest (1% of the images each) in `_runs/`. Each measurement is a fresh process
that does what the driver does before Ray starts (read the state, list the input and the
masks, plan) and reports its wall time, CPU time and peak RSS (VmHWM); the S3 server's own CPU
time over the same interval is reported beside it. Prints both side by side and writes
results/segment_scale.md.

The S3 server (`--s3-server`) is SeaweedFS by default (tests/seaweedfs.py: a production
store, started here on loopback with one identity; objects written to local disk, then
copied in with `weed filer.copy`). `moto`
runs the former mock inside this process instead (benchmarks/common.InProcessS3: objects
seeded straight into its store, listings patched to visit only the prefix asked for, since
moto scans and sorts the whole bucket on every page).

    python benchmarks/segment_scale.py --images 0 --s3-images 1000000 --nights 1 365

`--new-images N` then runs one real night on each store: N new small JPEGs beside the done
ones (10,000 is 1 % of a million), `jobs/segment.py` as its own driver on a local Ray with a
narrow FCN-32s (`--width`), and reports the night's wall time, its planning, and each stage's
images/s from the run manifest's per-image seconds (read, decode, model, encode, write).
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
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from benchmarks.common import (  # noqa: E402
    InProcessS3,
    reexec_with_allocator_settings,
    save_checkpoint,
    spread,
    write_report,
)
from fcn import storage  # noqa: E402
from fcn.nightly import (  # noqa: E402
    manifest,  # noqa: E402
    plan,
    state,
)
from fcn.nightly import schema as nightly_schema  # noqa: E402
from tests import seaweedfs  # noqa: E402

PLAN = """
import json, sys, time
from fcn import storage  # noqa: E402
from fcn.config import SegmentConfig
from fcn.nightly import plan, state
start, cpu = time.perf_counter(), time.process_time()
config = SegmentConfig(sys.argv[1], sys.argv[2], "m")
src, out = storage.locate(config.input), storage.locate(config.output)
done, _ = state.read(out)
listing, existing = plan.list_both(src, out)
work = plan.plan(listing, done, existing, src, out, config, "m")
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(json.dumps({"s": seconds, "cpu": cpu, "MiB": int(hwm) / 1024, "todo": work.todo.num_rows}))
"""


class Seaweed:
    """SeaweedFS on loopback with one bucket, this process's AWS settings pointed at it."""

    def __init__(self, bucket: str):
        import secrets

        self.folder = Path(tempfile.mkdtemp(prefix="fcn-bench-weed-"))
        self.server = seaweedfs.start(self.folder, bucket, "bench", secrets.token_hex(16))
        os.environ.update(self.server.client_env())
        self.bucket, self.uri = bucket, f"s3://{bucket}"

    def copy_tree(self, local: Path, prefix: str) -> None:
        """The folders under `local` to `s3://bucket/<prefix>/` with `weed filer.copy` through
        the filer (~4x the objects/s of parallel S3 PUTs here). Its address names the filer's
        gRPC port, which is not the default port + 10000 here."""
        filer = f"http://127.0.0.1:{self.server.ports[3]}.{self.server.ports[6]}"
        folders = sorted(str(p) for p in local.iterdir())
        subprocess.run(
            [seaweedfs.weed_binary(), "filer.copy", "-c", "32", *folders,
             f"{filer}/buckets/{self.bucket}/{prefix}/"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def cpu(self) -> float:
        """The server's CPU seconds so far (user + system)."""
        fields = Path(f"/proc/{self.server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class Moto(InProcessS3):
    def cpu(self) -> float:
        return time.process_time()  # the server runs in this process


def seed(src: str, out: str, images: int, server: Seaweed | Moto | None) -> None:
    """`images` one-byte images under `src` and their masks under `out` (local, or in the
    store of `server`)."""
    keys = [f"d{i // 1000:04d}/{i:07d}" for i in range(images)]
    src_at, out_at = storage.locate(src), storage.locate(out)
    if isinstance(server, Seaweed):  # written locally, then copied in bulk
        with tempfile.TemporaryDirectory(prefix="fcn-bench-seed-") as local:
            seed(f"{local}/in", f"{local}/out", images, None)
            bucket = f"{server.bucket}/"
            server.copy_tree(Path(local) / "in", src_at.path.removeprefix(bucket))
            server.copy_tree(Path(local) / "out", out_at.path.removeprefix(bucket))
        return
    if src_at.local:
        for i, key in enumerate(keys):
            image, mask = Path(src) / f"{key}.jpg", Path(out) / f"{key}.png"
            if i % 1000 == 0:
                image.parent.mkdir(parents=True)
                mask.parent.mkdir(parents=True)
            image.write_bytes(b"x")
            mask.write_bytes(b"m")
        return
    bucket = f"{server.bucket}/"
    for key in keys:
        server.put(f"{src_at.path}/{key}.jpg".removeprefix(bucket), b"x")
        server.put(f"{out_at.path}/{key}.png".removeprefix(bucket), b"m")


def write_state(src: str, out: str) -> None:
    """A snapshot in which every image under `src` is done, at the etag the plan computes."""
    src_at, out_at = storage.locate(src), storage.locate(out)
    listed = pa.concat_tables(list(src_at.walk()))
    paths = listed.column("path")
    keys = pc.utf8_slice_codeunits(paths, len(src_at.path) + 1)
    mask_keys = pc.replace_substring_regex(keys, r"\.jpg$", ".png")
    etag = pc.binary_join_element_wise(
        pc.cast(listed.column("size"), pa.string()),
        pc.cast(listed.column("mtime"), pa.string()),
        ":",
    )
    n = listed.num_rows
    scheme = "" if src_at.local else f"{src_at.scheme}://"
    table = pa.table(
        {
            "uri": pc.binary_join_element_wise(scheme, paths, ""),
            "etag": etag,
            "mask_uri": pc.binary_join_element_wise(out_at.uri + "/", mask_keys, ""),
            "status": pa.array(["ok"] * n),
            "error": pa.nulls(n, pa.string()),
            "model": pa.array(["m"] * n),
            "run_id": pa.array(["r0"] * n),
            "time": pa.array([1.0] * n),
        },
        schema=nightly_schema.STATE,
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    out_at.child(f"{state.STATE}/snapshot-r0.parquet").write_bytes(buffer.getvalue())


def write_nights(spare: str, nights: int, images: int) -> None:
    """`nights` past run manifests (1% of the images each), kept under `spare` until shown."""
    rows = manifest.to_table(
        [{"uri": f"u{i}", "status": "ok", "model": "m"} for i in range(images // 100)]
    )
    for night in range(nights):
        manifest.write(storage.locate(spare).child(f"night{night:04d}.parquet"), rows)


def show_nights(spare: str, out: str, count: int) -> None:
    """Move manifests between `spare` and `<out>/_runs/` until exactly `count` are there."""
    spare_at, runs_at = storage.locate(spare), storage.locate(out).child(state.RUNS)
    names = {
        where: sorted(Path(p).name for p in plan.collect(where.walk()).column("path").to_pylist())
        for where in (spare_at, runs_at)
    }
    if len(names[runs_at]) > count:
        moves = [(runs_at, spare_at, n) for n in names[runs_at][count:]]
    else:
        moves = [(spare_at, runs_at, n) for n in names[spare_at][: count - len(names[runs_at])]]
    for source, target, name in moves:
        if target.local:
            os.makedirs(target.path, exist_ok=True)
        source.fs.mv(source.child(name).path, target.child(name).path)


def measure(src: str, out: str, server: Seaweed | Moto | None) -> dict:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})  # the S3 server
    server_cpu = server.cpu() if server else 0.0
    done = subprocess.run(
        [sys.executable, "-c", PLAN, src, out], cwd=REPO, capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return {
        **json.loads(done.stdout.strip().splitlines()[-1]),
        "server_cpu": (server.cpu() if server else 0.0) - server_cpu,
    }


def series(
    root: str, images: int, nights: list[int], trials: int, server: Seaweed | Moto | None = None
) -> dict[int, dict]:
    """Seed `root`, then measure planning with each number of past nights, in the order
    1, 30, 365, 365, 30, 1, ... (load that drifts during the run hits every count alike):
    {nights: {"s": [seconds...], "cpu": [CPU seconds...], "MiB": [peak RSS...]}}."""
    src, out, spare = f"{root}/in", f"{root}/out", f"{root}/spare-nights"
    t = time.perf_counter()
    seed(src, out, images, server)
    write_state(src, out)
    write_nights(spare, max(nights), images)
    print(f"seeded {images} images under {src} in {time.perf_counter() - t:.0f} s", flush=True)
    results = {count: {"s": [], "cpu": [], "server_cpu": [], "MiB": []} for count in nights}
    for trial in range(trials):
        for count in sorted(nights, reverse=bool(trial % 2)):
            show_nights(spare, out, count)
            measured = measure(src, out, server)
            assert measured["todo"] == 0, measured
            print(src, count, measured, flush=True)
            for key in results[count]:
                results[count][key].append(measured[key])
    return results


NEW_SIDE = 64  # the new images' side: small, so the night measures the pipeline, not the net


def add_new_images(src: str, count: int, server: Seaweed | Moto | None) -> None:
    """`count` real JPEGs under `<src>/new/`: 16 distinct pictures, repeated (decoding costs
    the same), in folders of 1,000 like the seeded ones."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    pictures = []
    for _ in range(16):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (NEW_SIDE, NEW_SIDE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        pictures.append(buffer.getvalue())
    src_at = storage.locate(src)
    if isinstance(server, Seaweed):
        with tempfile.TemporaryDirectory(prefix="fcn-bench-new-") as local:
            add_new_images(local, count, None)
            server.copy_tree(Path(local), src_at.path.removeprefix(f"{server.bucket}/"))
        return
    for i in range(count):
        target = src_at.child(f"new/n{i // 1000:04d}/{i:07d}.jpg")
        if src_at.local and i % 1000 == 0:
            os.makedirs(os.path.dirname(target.path), exist_ok=True)
        target.write_bytes(pictures[i % len(pictures)])


def at_once() -> dict[str, int]:
    """How many of each stage's workers run at once in the night's layout: `io_concurrency`
    read+decode and encode+write tasks, each reading and writing on `IO_THREADS` threads, and
    one model actor."""
    from fcn.config import SegmentConfig
    from fcn.nightly.stages import IO_THREADS

    tasks = SegmentConfig("in", "out", "m").io_concurrency
    io = tasks * IO_THREADS
    return {"read": io, "decode": tasks, "model": 1, "forward": 1, "encode": tasks, "write": io}


def night(root: str, new: int, width: float, server: Seaweed | Moto | None) -> dict:
    """One real night over the seeded store with `new` new images: planning (a fresh process,
    as in `measure`), then the whole job; the stages' images/s from its run manifest."""
    import ray
    import torch

    from benchmarks.segment import STAGES, run_job, steady_rate
    from fcn.engine.models import build_model
    from fcn.runtime import ALLOCATOR_ENV

    src, out = f"{root}/in", f"{root}/out"
    started = time.perf_counter()
    add_new_images(src, new, server)
    print(f"wrote {new} new images in {time.perf_counter() - started:.0f} s", flush=True)
    planned = measure(src, out, server)
    assert planned["todo"] == new, planned
    with tempfile.TemporaryDirectory(prefix="fcn-bench-night-") as work:
        torch.manual_seed(0)
        model = build_model("fcn32s", num_classes=21, width=width)
        save_checkpoint(model, "fcn32s", f"{work}/checkpoint")
        threads = os.cpu_count() or 1
        ray.init(num_cpus=threads, include_dashboard=False, runtime_env={"env_vars": ALLOCATOR_ENV})
        try:
            args = ["--input", src, "--output", out, "--model", f"{work}/checkpoint"]
            # One actor on half the CPUs, all threads, batches of 16: the read/decode and
            # encode/write tasks get the other half (benchmarks/segment.py's first layout).
            args += ["--concurrency", "1", "--cpus-per-actor", str(threads / 2)]
            args += ["--threads", str(threads), "--batch-size", "16"]
            started = time.perf_counter()
            _, rows, rss, actor_rss = run_job(args, ray.get_runtime_context().gcs_address)
            wall = time.perf_counter() - started
        finally:
            ray.shutdown()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == new == len(rows), (len(ok), len(rows))
    busy = {s: sum(r[f"{s}_seconds"] or 0 for r in ok) for s in STAGES}
    workers = at_once()
    result = {
        "new": new,
        "wall": wall,
        "planning": planned["s"],
        "whole": new / wall,
        "steady": steady_rate(rows, 1),
        # what the stage can pass: one worker's images per busy second x workers at once
        "stage": {s: new / busy[s] * workers[s] if busy[s] else float("inf") for s in STAGES},
        "driver_MiB": rss,
        "actor_MiB": actor_rss,
    }
    print(src, result, flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--s3-images", type=int, default=200_000, help="0: no S3 run")
    p.add_argument("--s3-server", choices=("seaweedfs", "moto"), default="seaweedfs")
    p.add_argument("--nights", type=int, nargs="+", default=[1, 30, 365])
    p.add_argument("--trials", type=int, default=2, help="measurements per point (noisy machine)")
    p.add_argument("--new-images", type=int, default=0, help="then one real night with these")
    p.add_argument("--width", type=float, default=0.0625, help="the night's FCN-32s width")
    p.add_argument("--out", default=str(REPO / "results" / "segment_scale.md"))
    args = p.parse_args()
    if args.new_images:
        reexec_with_allocator_settings()  # before seeding: the night's actors need them
    root = Path(tempfile.mkdtemp(prefix="fcn-bench-scale-"))
    runs, nights = {}, {}
    try:
        if args.images:
            name = f"local, {args.images:,} images"
            runs[name] = series(str(root), args.images, args.nights, args.trials)
            if args.new_images:
                nights[name] = night(str(root), args.new_images, args.width, None)
        shutil.rmtree(root, ignore_errors=True)  # before the S3 run: a quiet disk
        if args.s3_images:
            server = (Seaweed if args.s3_server == "seaweedfs" else Moto)("fcn-bench-scale")
            try:
                name = f"{args.s3_server}, {args.s3_images:,} images"
                runs[name] = series(server.uri, args.s3_images, args.nights, args.trials, server)
                if args.new_images:
                    nights[name] = night(server.uri, args.new_images, args.width, server)
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_report(report(runs, args.nights) + night_report(nights, args.width), args.out)


def night_report(nights: dict[str, dict], width: float) -> str:
    if not nights:
        return ""
    from benchmarks.segment import STAGES

    workers = at_once()
    stages = " | ".join(f"{s} img/s ({workers[s]} at once)" for s in STAGES)
    lines = [
        f"| store | new images | night s | planning s | images/s (whole night) | images/s "
        f"(steady) | {stages} | driver MiB | actor MiB |",
        "|" + "---|" * (8 + len(STAGES)),
    ]
    for name, r in nights.items():
        cells = " | ".join(f"{r['stage'][s]:,.0f}" for s in STAGES)
        lines.append(
            f"| {name} | {r['new']:,} | {r['wall']:.0f} | {r['planning']:.0f} | "
            f"{r['whole']:.1f} | {r['steady']:.1f} | {cells} | {r['driver_MiB']:,.0f} | "
            f"{r['actor_MiB']:,.0f} |"
        )
    return "\n".join(
        [
            "## A night with new images",
            "",
            f"New {NEW_SIDE}x{NEW_SIDE} JPEGs beside the done ones; `jobs/segment.py` as its own "
            f"driver on a local Ray, FCN-32s at width {width:g}, one actor (half the CPUs, all "
            "threads, batches of 16), the read/decode and encode/write tasks on the rest. "
            "Night s: the job's wall time (Ray start-up in the job, planning, the pipeline, the "
            "manifest and state merge); planning s: a fresh process planning the same night. "
            "Stage img/s: what the stage can pass with its workers running at once: images / "
            "the seconds the manifest records for that stage summed over the images (one "
            "worker's images per busy second) x the workers (model = the actor's whole share: "
            "normalize, forward, class map, statistics; forward = the net alone). The smallest "
            "is the night's ceiling; the whole night's images/s also pays Ray's start-up and "
            "the actor's model load.",
            "",
            *lines,
            "",
        ]
    )


def report(runs: dict[str, dict[int, dict]], nights: list[int]) -> str:
    columns = (
        ("s", "planning s"),
        ("cpu", "CPU s"),
        ("server_cpu", "S3 server CPU s"),
        ("MiB", "driver peak RSS MiB"),
    )
    header = " | ".join(f"{name}: {label}" for name in runs for _, label in columns)
    lines = [f"| past nights | {header} |", "|" + "---|" * (1 + len(columns) * len(runs))]
    for count in sorted(nights):
        cells = " | ".join(spread(r[count][key]) for r in runs.values() for key, _ in columns)
        lines.append(f"| {count} | {cells} |")
    first, last = min(nights), max(nights)
    verdicts = []
    for name, r in runs.items():
        ratio = {key: median(r[last][key]) / median(r[first][key]) for key in ("s", "cpu", "MiB")}
        verdicts.append(
            f"{name}: {last} nights / {first} night (medians): time {ratio['s']:.2f}x, CPU time "
            f"{ratio['cpu']:.2f}x, memory {ratio['MiB']:.2f}x (goal <= 1.2x); planning "
            f"{median(r[last]['s']):.0f} s for nothing to do."
        )
    return "\n".join(
        [
            "# Segment planning against history",
            "",
            "Every image done (nothing to plan); each past night left a run manifest of 1% of "
            "the images in `_runs/` (never read when planning). Planning = read the state, list "
            "the input and the masks, join, decide (Arrow), in a fresh process. Cells: median "
            "(min-max, trials); CPU s = the planning process's own CPU time, which other "
            "processes on the machine disturb less than its wall time; S3 server CPU s = the "
            "CPU time the S3 server spent meanwhile (SeaweedFS: its process; moto: this "
            "process, which runs it).",
            "",
            *lines,
            "",
            *verdicts,
            "",
        ]
    )


if __name__ == "__main__":
    main()
