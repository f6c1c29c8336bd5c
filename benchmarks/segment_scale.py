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

from benchmarks.common import InProcessS3, spread, write_report  # noqa: E402
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--s3-images", type=int, default=200_000, help="0: no S3 run")
    p.add_argument("--s3-server", choices=("seaweedfs", "moto"), default="seaweedfs")
    p.add_argument("--nights", type=int, nargs="+", default=[1, 30, 365])
    p.add_argument("--trials", type=int, default=2, help="measurements per point (noisy machine)")
    p.add_argument("--out", default=str(REPO / "results" / "segment_scale.md"))
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fcn-bench-scale-"))
    runs = {}
    try:
        if args.images:
            runs[f"local, {args.images:,} images"] = series(
                str(root), args.images, args.nights, args.trials
            )
        shutil.rmtree(root, ignore_errors=True)  # before the S3 run: a quiet disk
        if args.s3_images:
            server = (Seaweed if args.s3_server == "seaweedfs" else Moto)("fcn-bench-scale")
            try:
                runs[f"{args.s3_server}, {args.s3_images:,} images"] = series(
                    server.uri, args.s3_images, args.nights, args.trials, server
                )
            finally:
                server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_report(report(runs, args.nights), args.out)


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
