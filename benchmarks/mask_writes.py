"""The segment job's encode + write stage with its masks written one at a time versus on
`fcn.nightly.stages.IO_THREADS` threads, side by side on one store.

    python benchmarks/mask_writes.py [--masks 1024] [--batch 64] [--trials 5] [--store seaweedfs]

`stages.encode_write` itself (palette PNG encode, the write, the batch's manifest part) on
batches of 64x64 class maps, to SeaweedFS on loopback (a real S3 server, tests/seaweedfs.py)
or to local disk (each mask written to a temporary file, fsynced and renamed). The two
settings alternate trial by trial, so load that drifts hits both alike; prints masks/s for
each (median and spread) and the ratio, and writes results/mask_writes.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from benchmarks.common import spread, write_report  # noqa: E402
from fcn import storage  # noqa: E402
from fcn.engine.classes import voc_colormap  # noqa: E402
from fcn.nightly import stages  # noqa: E402

SIDE = 64


def batch_of(count: int, out: storage.Location, trial: str, rng) -> pa.Table:
    """`count` predicted rows (random 4-class maps) whose masks go under `out/<trial>/`."""
    rows = []
    for i in range(count):
        key = f"{trial}/m{i:05d}.png"
        classes = rng.integers(0, 4, (SIDE, SIDE), dtype=np.uint8)
        rows.append(
            {"uri": f"img{i}", "mask_uri": out.child(key).uri, "mask_key": key, "etag": "e",
             "size": 1, "status": None, "error": None, "height": SIDE, "width": SIDE,
             "mask": classes.tobytes()}
        )  # fmt: skip
    return pa.Table.from_pylist(rows)


def trial(out: storage.Location, masks: int, batch: int, threads: int, name: str) -> float:
    """Masks/s of encode_write over `masks` masks in batches of `batch` with `threads`."""
    rng = np.random.default_rng(0)
    batches = [batch_of(batch, out, f"{name}/{b}", rng) for b in range(masks // batch)]
    palette, parts = voc_colormap(), out.child(f"parts-{name}")
    stages.IO_THREADS = threads  # read at each call
    start = time.perf_counter()
    for table in batches:
        rows = stages.encode_write(table, out, palette, parts, "m", "r").column("status")
        assert rows.to_pylist() == ["ok"] * batch
    return masks / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--masks", type=int, default=1024, help="masks per trial")
    p.add_argument("--batch", type=int, default=64, help="masks per encode_write call")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--store", choices=("seaweedfs", "local"), default="seaweedfs")
    p.add_argument("--out", default=str(REPO / "results" / "mask_writes.md"))
    args = p.parse_args()
    threaded = stages.IO_THREADS
    folder = Path(tempfile.mkdtemp(prefix="fcn-bench-writes-"))
    server = None
    try:
        if args.store == "seaweedfs":
            from benchmarks.segment_scale import Seaweed

            server = Seaweed("fcn-bench-writes")
            out = storage.locate(f"{server.uri}/masks")
        else:
            out = storage.locate(str(folder / "masks"))
        rates = {1: [], threaded: []}
        for t in range(args.trials):
            for threads in (1, threaded) if t % 2 == 0 else (threaded, 1):
                rate = trial(out, args.masks, args.batch, threads, f"t{t}-{threads}")
                rates[threads].append(rate)
                print(f"trial {t}: {threads} thread(s) {rate:.0f} masks/s", flush=True)
    finally:
        stages.IO_THREADS = threaded
        if server:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    ratio = median(rates[threaded]) / median(rates[1])
    ratios = [b / a for a, b in zip(rates[1], rates[threaded], strict=True)]
    store = "SeaweedFS on loopback" if args.store == "seaweedfs" else "local disk"
    write_report(
        "\n".join(
            [
                "# Mask writes: one at a time vs on threads",
                "",
                f"`stages.encode_write` on {args.masks} masks of {SIDE}x{SIDE} per trial, "
                f"batches of {args.batch}, to {store}; the two settings alternate, "
                f"{args.trials} trials each. Masks/s: median (min-max).",
                "",
                "| masks written | masks/s |",
                "|---|---|",
                f"| one at a time | {spread(rates[1])} |",
                f"| on {threaded} threads | {spread(rates[threaded])} |",
                "",
                f"{threaded} threads / 1 (medians): {ratio:.2f}x; per trial pair: "
                f"{min(ratios):.2f}-{max(ratios):.2f}x.",
                "",
            ]
        ),
        args.out,
    )


if __name__ == "__main__":
    main()
