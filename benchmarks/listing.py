"""Listing a bucket of images: s3fs (botocore parses each page in Python) against pyarrow's C++
S3 client, which `fcn.storage.Location.walk` uses since the million-image planning run spent
most of its time in the driver's CPU (results/segment_scale.md).

    python benchmarks/listing.py [--images 100000] [--trials 3]

Seeds `--images` one-byte objects in folders of 1,000 on SeaweedFS (as
benchmarks/segment_scale.py does), then lists them with each client in turn, alternating, in
this one process: wall time, this process's CPU time and the server's, and the ratio of the
medians. Both listings must give the same (path, size, mtime) rows, or the state's image
versions would all look changed. Prints the table and writes results/listing.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import spread, write_report  # noqa: E402
from benchmarks.segment_scale import Seaweed, seed  # noqa: E402
from fcn import storage  # noqa: E402
from fcn.storage import _mtime  # noqa: E402


def by_s3fs(at: storage.Location) -> list[tuple]:
    """The listing as `Location.walk` made it before: s3fs's walk, one folder at a time."""
    return [
        (info["name"], int(info.get("size") or 0), _mtime(info))
        for _, _, files in at.fs.walk(at.path, detail=True)
        for info in files.values()
    ]


def by_pyarrow(at: storage.Location) -> list[tuple]:
    return [tuple(row.values()) for table in at.walk() for row in table.to_pylist()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "results" / "listing.md"))
    args = p.parse_args()
    server = Seaweed("fcn-bench-listing")
    try:
        t = time.perf_counter()
        seed(f"{server.uri}/in", f"{server.uri}/out", args.images, server)
        print(f"seeded {args.images} images in {time.perf_counter() - t:.0f} s", flush=True)
        at = storage.locate(f"{server.uri}/in")
        runs = {"s3fs": by_s3fs, "pyarrow": by_pyarrow}
        results = {name: {"s": [], "cpu": [], "server": []} for name in runs}
        rows = {}
        for trial in range(args.trials):
            for name in sorted(runs, reverse=bool(trial % 2)):
                wall, cpu, server_cpu = time.perf_counter(), time.process_time(), server.cpu()
                rows[name] = sorted(runs[name](at))
                results[name]["s"].append(time.perf_counter() - wall)
                results[name]["cpu"].append(time.process_time() - cpu)
                results[name]["server"].append(server.cpu() - server_cpu)
                print(name, {k: round(v[-1], 2) for k, v in results[name].items()}, flush=True)
        assert rows["s3fs"] == rows["pyarrow"] and len(rows["s3fs"]) == args.images
    finally:
        server.stop()
    write_report(report(results, args), args.out)


def report(results: dict, args) -> str:
    lines = ["| client | listing s | this process's CPU s | server CPU s |", "|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {spread(r['s'])} | {spread(r['cpu'])} | {spread(r['server'])} |")
    ratio = {k: median(results["s3fs"][k]) / median(results["pyarrow"][k]) for k in ("s", "cpu")}
    return "\n".join(
        [
            "# Listing a bucket: s3fs against pyarrow",
            "",
            f"{args.images:,} one-byte objects in folders of 1,000 on SeaweedFS on loopback, "
            f"listed whole with each client in turn ({args.trials} trials, alternating); both "
            "gave the same (path, size, mtime) rows.",
            "",
            *lines,
            "",
            f"s3fs / pyarrow (medians): {ratio['s']:.2f}x the time, {ratio['cpu']:.2f}x the CPU.",
            "",
            f"`python benchmarks/listing.py --images {args.images} --trials {args.trials}`",
            "",
        ]
    )


if __name__ == "__main__":
    main()
