"""Rasters larger than memory: the peak memory of `segment_raster` does not grow with the
raster, and what giving the heap back once a tile costs (issue 26).

    python benchmarks/rasters.py [--sizes 2000 8000 20000] [--tile-memory-mb 256]

1. Peak memory: for each side, a tiled, deflated GeoTIFF of colour squares (written band by
   band, never held whole) is segmented by `fcn.engine.rasters.segment_raster` in a fresh
   process with the model actors' allocator settings (glibc without mmap and trimming),
   FCN-32s at 1/16 width, one thread, the same tile budget for every side; reported: the
   process's VmHWM before the raster (imports, model) and after, each as a ratio to the
   smallest side. Once with `release_free_memory` after each tile (what the job does) and
   once with it disabled, so the table shows what it buys.
2. Its cost: one tile's forward in blocks of six with and without the release, alternating
   blocks in one process (the page faults it causes fall on the next forward).
Writes results/rasters.md. The 20,000^2 side takes ~6 minutes a variant on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import reexec_with_allocator_settings, spread, write_report  # noqa: E402

reexec_with_allocator_settings()

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from rasterio.windows import Window  # noqa: E402

MODEL, WIDTH, CLASSES = "fcn32s", 1 / 16, 4
SQUARE = 1000

CHILD = """
import json, sys
import torch
from fcn.config.tiling import Tiling
from fcn.engine import rasters
from fcn.engine.classes import default_classes
from fcn.engine.models import build_model
from fcn.engine.models.preprocess import TORCHVISION
src, dst, memory, release = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
name, classes, width = sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
torch.set_num_threads(1)
torch.manual_seed(0)
model = build_model(name, classes, width=width).eval()
if not release:
    rasters.release_free_memory = lambda: None
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) * 1024
before = peak()
done = rasters.segment_raster(model, TORCHVISION, src, dst, default_classes(classes),
                              Tiling("auto", memory))
print(json.dumps({"before": before, "peak": peak(), "tiles": done.tiles}))
"""


def squares(path: Path, side: int) -> None:
    """side x side RGB in squares of four colours, tiled and deflated, written band by band."""
    colours = np.array([(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 220)], np.uint8)
    columns = np.arange(side) // SQUARE
    with rasterio.open(
        path, "w", driver="GTiff", height=side, width=side, count=3, dtype="uint8",
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    ) as out:  # fmt: skip
        for top in range(0, side, SQUARE):
            rows = min(SQUARE, side - top)
            band = colours[np.broadcast_to((columns + top // SQUARE) % 4, (rows, side))]
            out.write(np.moveaxis(band, -1, 0), window=Window(0, top, side, rows))


def memory_table(args, work: Path) -> str:
    rows = ["| raster | tiles | release per tile | VmHWM before (MiB) | peak (MiB) | x smallest |"
            " seconds |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    first = {}
    for side in args.sizes:
        src = work / f"in{side}.tif"
        squares(src, side)
        for release in (True, False):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(src), str(work / "mask.tif"),
                 str(args.tile_memory_mb << 20), "1" if release else "0", MODEL, str(CLASSES),
                 str(WIDTH)],
                cwd=REPO, capture_output=True, text=True, check=True,
            )  # fmt: skip
            got = json.loads(done.stdout.strip().splitlines()[-1])
            first.setdefault(release, got["peak"])
            rows.append(
                f"| {side}x{side} | {got['tiles']} | {'yes' if release else 'no'} | "
                f"{got['before'] / 2**20:.0f} | {got['peak'] / 2**20:.0f} | "
                f"{got['peak'] / first[release]:.2f} | {time.perf_counter() - started:.0f} |"
            )
            print(rows[-1], flush=True)
        src.unlink()
    return "\n".join(rows)


def cost_table(args) -> str:
    from fcn.config.tiling import Tiling
    from fcn.engine import inference, rasters, tiles
    from fcn.engine.models import build_model
    from fcn.engine.models.preprocess import TORCHVISION

    torch.set_num_threads(1)
    model = build_model(MODEL, CLASSES, width=WIDTH).eval()
    side = tiles.auto_side(model, Tiling("auto", args.tile_memory_mb << 20).memory, CLASSES)
    image = np.random.default_rng(0).integers(0, 256, (1, side, side, 3), np.uint8)
    seconds = {True: [], False: []}
    inference.predict(model, image, TORCHVISION, tile="none")
    for block in range(4 * args.trials):
        release = block % 2 == 0
        for _ in range(6):
            started = time.perf_counter()
            inference.predict(model, image, TORCHVISION, tile="none")
            if release:
                rasters.release_free_memory()
            seconds[release].append(time.perf_counter() - started)
    with_, without = statistics.median(seconds[True]), statistics.median(seconds[False])
    return "\n".join([
        "| tile | s per tile, released | s per tile, kept | ratio (median) |", "|---|---|---|---|",
        f"| {side}x{side} | {spread(seconds[True])} | {spread(seconds[False])} | "
        f"{with_ / without:.2f} |",
    ])  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 20000])
    p.add_argument("--tile-memory-mb", type=int, default=256)
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "results" / "rasters.md"))
    args = p.parse_args()
    print("cost of the release ...", flush=True)
    cost = cost_table(args)
    print(cost, "\npeak memory ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="fcn-bench-rasters-") as work:
        memory = memory_table(args, Path(work))
    write_report("\n".join([
        "# Rasters at constant memory (benchmarks/rasters.py)", "",
        f"{MODEL} at width {WIDTH:g}, random weights, one thread, `--tile-memory-mb "
        f"{args.tile_memory_mb}`; `python benchmarks/rasters.py {' '.join(sys.argv[1:])}`.", "",
        "## Peak memory of segment_raster", "", memory, "",
        "## What the release once a tile costs", "", cost, "",
    ]), args.out)  # fmt: skip


if __name__ == "__main__":
    main()
