"""Tiled inference: memory that does not grow with the image, masks equal to whole-image ones,
and what the overlap costs (issue 26).

    python benchmarks/tiles.py [--model fcn8s] [--width 0.25] [--tile 1024]
                               [--sizes 2000 8000] [--fit 1024] [--trials 3]

Three tables, measured in one run:
1. Peak memory: one fresh process per image size runs `predict(..., tile=T)` on a random
   image held in memory (as the segment job's model actor holds a decoded image), the same
   tile side T for every size; reported: the process's peak resident memory (VmHWM) and its
   growth over the forward, each as a ratio to the smallest size. The image and its class map
   themselves (3 + 1 bytes a pixel) grow with the size; the forward's growth should not.
2. Tiled vs whole on images that fit whole (`--fit`): seconds per megapixel, both ways,
   alternating in the same process; the share of equal pixels; the overlap's extra compute
   (padded input pixels of all tiles / those of the whole image).
3. The overlap's extra compute at the default `--tile auto` (4 GiB per forward) for the
   paper's full-width FCN-VGG16 at common image sizes, from the tile geometry alone.
Writes results/tiles.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import reexec_with_allocator_settings, spread, write_report  # noqa: E402

reexec_with_allocator_settings()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fcn.config.tiling import DEFAULT_TILE_MEMORY  # noqa: E402
from fcn.engine import tiles  # noqa: E402
from fcn.engine.inference import predict  # noqa: E402
from fcn.engine.models import build_model  # noqa: E402
from fcn.engine.models.preprocess import CAFFE  # noqa: E402

PAD = 100  # the first convolution's padding (docs/paper.md): what every tile pays again
LEAN_MARGIN = 96  # a smaller --tile-margin, for the overlap table

CHILD = """
import json, sys
import numpy as np, torch
from fcn.engine.inference import predict
from fcn.engine.models import build_model
from fcn.engine.models.preprocess import CAFFE

name, width, size, tile = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(int(sys.argv[5]))
torch.manual_seed(0)
options = {"width": width} if width != 1 else {}
model = build_model(name, num_classes=21, **options).eval()
image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), np.uint8)
def peak():  # this process's own high-water mark (ru_maxrss would carry the parent's over)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) * 1024
with torch.inference_mode():
    predict(model, image[:, :64, :64], CAFFE)  # the allocator's first forward, not measured
before = peak()
mask = predict(model, image, CAFFE, tile=tile)
print(json.dumps({"peak": peak(), "growth": peak() - before}))
"""


def overlap(height: int, width: int, side: int, margin: int) -> float:
    """Padded input pixels of every tile / those of the whole image: the extra compute."""
    rows, cols = tiles.spans(height, side, margin), tiles.spans(width, side, margin)
    tiled = sum(
        (r.stop - r.start + 2 * PAD) * (c.stop - c.start + 2 * PAD) for r in rows for c in cols
    )
    return tiled / ((height + 2 * PAD) * (width + 2 * PAD))


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base >= 16 << 20 else "-"  # growth under 16 MiB: noise


def memory_table(args) -> str:
    rows = ["| image | peak RSS (MiB) | x smallest | forward growth (MiB) | x smallest |",
            "|---|---|---|---|---|"]  # fmt: skip
    first = None
    for size in args.sizes:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, args.model, str(args.width), str(size), str(args.tile),
             str(args.threads)],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        got = json.loads(done.stdout.strip().splitlines()[-1])
        first = first or got
        rows.append(
            f"| {size}x{size} | {got['peak'] / 2**20:.0f} | {got['peak'] / first['peak']:.2f} | "
            f"{got['growth'] / 2**20:.0f} | {ratio(got['growth'], first['growth'])} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows)


def speed_table(args, model) -> str:
    side, margin = args.tile, tiles.margin_of(model)
    image = np.random.default_rng(1).integers(0, 256, (1, args.fit, args.fit, 3), np.uint8)
    megapixels = args.fit**2 / 1e6
    seconds = {"none": [], "tiled": []}
    masks = {}
    with torch.inference_mode():
        predict(model, image[:, :64, :64], CAFFE)
        for _ in range(args.trials):  # alternating: load on a shared machine falls on both
            for mode, tile in (("none", "none"), ("tiled", side)):
                started = time.perf_counter()
                masks[mode] = predict(model, image, CAFFE, tile=tile)
                seconds[mode].append((time.perf_counter() - started) / megapixels)
    ratios = [t / w for t, w in zip(seconds["tiled"], seconds["none"], strict=True)]
    equal = float((masks["tiled"] == masks["none"]).mean())
    return "\n".join([
        "| image | tile | whole s/MP | tiled s/MP | tiled / whole | overlap compute | equal |",
        "|---|---|---|---|---|---|---|",
        f"| {args.fit}x{args.fit} | {side} (margin {margin}) | {spread(seconds['none'])} | "
        f"{spread(seconds['tiled'])} | {spread(ratios)} | "
        f"{overlap(args.fit, args.fit, side, margin):.2f}x | {100 * equal:.3f} % |",
    ])  # fmt: skip


def default_overlap_table() -> str:
    model = build_model("fcn8s", num_classes=21)  # the paper's full width
    side = tiles.auto_side(model, DEFAULT_TILE_MEMORY, 21)
    exact = tiles.margin_of(model)
    rows = [f"`--tile auto` at {DEFAULT_TILE_MEMORY >> 30} GiB: FCN-8s (full width) tiles of "
            f"{side} px; extra compute with the exact margin ({exact} px, the default) and "
            f"with `--tile-margin {LEAN_MARGIN}`.", "",
            f"| image | tiles | overlap compute | with --tile-margin {LEAN_MARGIN} |",
            "|---|---|---|---|"]  # fmt: skip
    for h, w in ((3000, 4000), (4000, 6000), (8000, 8000), (20000, 20000)):
        count = len(tiles.spans(h, side, exact)) * len(tiles.spans(w, side, exact))
        rows.append(
            f"| {w}x{h} | {count} | {overlap(h, w, side, exact):.2f}x | "
            f"{overlap(h, w, side, LEAN_MARGIN):.2f}x |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="fcn8s")
    p.add_argument("--width", type=float, default=0.25, help="VGG16 channel width (1 = paper)")
    p.add_argument("--tile", type=int, default=1024, help="tile side for tables 1 and 2")
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--fit", type=int, default=1024, help="image side of table 2 (fits whole)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "results" / "tiles.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = {"width": args.width} if args.width != 1 else {}
    model = build_model(args.model, num_classes=21, **options).eval()
    print("tiled vs whole ...", flush=True)
    speed = speed_table(args, model)
    print(speed, "\npeak memory ...", flush=True)
    memory = memory_table(args)
    net = f"{args.model}" + (f" at width {args.width:g}" if args.width != 1 else "")
    write_report("\n".join([
        "# Tiled inference (benchmarks/tiles.py)", "",
        f"{net}, random weights, {args.threads} threads; `python benchmarks/tiles.py "
        f"{' '.join(sys.argv[1:])}`.", "",
        "## Peak memory, one image held in memory, tiles of the same side", "", memory, "",
        "## Tiled vs whole on an image that fits whole", "", speed, "",
        "## Overlap at the default tile size", "", default_overlap_table(), "",
    ]), args.out)  # fmt: skip


if __name__ == "__main__":
    main()
