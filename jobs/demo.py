"""The whole path end to end on local defaults: generate -> ingest -> train -> segment.

Each step runs the real job script as a user would (`python jobs/X.py ...`), each on a local
Ray instance, logging to a local MLflow store under the demo root. A few minutes on 2 CPU
cores; everything lands under --root. At the end it prints the commands to try next (also in
docs/after-demo.md).
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The demo's own class list: background and three VOC object classes in VOC's colours. The
# model scores only these 4 (not VOC's 21), so minutes of training go to what the images hold
# and mean IU is over classes that occur.
DEMO_CLASSES = """background 0 0 0
aeroplane 128 0 0
bicycle 0 128 0
bird 128 128 0
"""
EXAMPLES = """examples:
  make demo                                   # the defaults, into ./demo
  python jobs/demo.py --root /tmp/demo --iterations 400   # longer training, better masks"""


def step(title: str, args: list[str], env: dict, cwd: Path) -> None:
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    started = time.monotonic()
    # cwd = the demo root: MLflow's local artifact store (./mlruns) lands there too. Ray logs
    # (progress included) to stderr: one stream keeps them beside the step they belong to.
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"demo step '{title}' failed (exit {done.returncode}); see its output above")
    print(f"--- {title}: {time.monotonic() - started:.0f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--root", default="demo", help="where everything the demo writes goes")
    parser.add_argument("--images", type=int, default=60, help="images per generated dataset")
    parser.add_argument("--iterations", type=int, default=200, help="training iterations")
    parser.add_argument("--model", default="fcn8s", help="FCN model to train")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data, parquet, runs = root / "data", root / "parquet", root / "runs"
    masks, mlflow_db, classes = root / "masks", root / "mlflow.db", root / "classes.txt"
    # A demo starts clean; `make clean-demo` too.
    for old in (data, parquet, runs, masks, root / "overlays"):
        shutil.rmtree(old, ignore_errors=True)
    classes.write_text(DEMO_CLASSES)
    env = dict(os.environ)
    # A local MLflow store inside the demo root, unless the user points at a server.
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")
    started = time.monotonic()
    run_steps(args, root, env)
    summary(root, env["MLFLOW_TRACKING_URI"], time.monotonic() - started)
    return 0


def run_steps(args, root: Path, env: dict) -> None:
    data, parquet, classes = root / "data", root / "parquet", root / "classes.txt"
    # 96-144 px: large enough for FCN-8s's stride-8 skips to draw object outlines, small
    # enough that a quarter-width VGG16 steps in a fraction of a second on one core.
    step("1/4 generate a small VOC + SBD layout dataset and unlabeled images", [
        "-m", "fcn.data.synthetic", "--voc", str(data / "VOC2012"), "--sbd", str(data / "SBD"),
        "--unlabeled", str(data / "unlabeled"), "--num-images", str(args.images),
        "--min-size", "96", "--max-size", "144", "--seed", "0", "--class-list", str(classes),
    ], env, root)  # fmt: skip
    step("2/4 ingest to validated Parquet (Ray Data)", [
        str(REPO / "jobs/ingest.py"), "--voc", str(data / "VOC2012"), "--sbd", str(data / "SBD"),
        "--unlabeled", str(data / "unlabeled"), "--classes", str(classes),
        "--output", str(parquet),
    ], env, root)  # fmt: skip
    step(f"3/4 train {args.model} with Ray Train (2 workers, CPU)", [
        str(REPO / "jobs/train.py"), "--data", str(parquet),
        *train_flags(args.model, args.iterations),
        "--storage", str(root / "runs"), "--name", "demo", "--experiment", "fcn-demo",
        "--registered-model", "fcn-demo", "--workers", "2", "--cpus-per-worker", "1",
    ], env, root)  # fmt: skip
    step("4/4 segment the unlabeled images (Ray Data actor pool)", [
        str(REPO / "jobs/segment.py"), "--input", str(data / "unlabeled"),
        "--output", str(root / "masks"), "--model", str(root / "runs" / "demo" / "best"),
        "--save-overlays", str(root / "overlays"),
    ], env, root)  # fmt: skip


def train_flags(model: str, iterations: int) -> list[str]:
    """The demo's training recipe (tests/integration/test_opex_job.py runs it too). From
    scratch on a CPU (no ImageNet weights can be fetched here): the `fast` preset (Adam) at a
    higher lr, a quarter-width VGG16, balanced-sqrt class weights against the dominant
    background, and 96 px crops with flips, 4 per step, so each step sees varied object parts.
    `--preset paper` at full width with `--init imagenet` is the published recipe.
    Measured with this recipe in one process (2 threads, 40 train / 12 val images of 96-144
    px, 2026-11-27): mean IU 0.57 after 50 steps, 0.70 after 100, 0.82 after 150, 0.87 after
    200, at ~0.5 s per step. The demo itself (Ray Train, 2 workers, its 40 val images): 0.77
    after 100 steps, 0.90 after 200; 500 s end to end, on a 2-core machine shared with
    other jobs (load average 15-30), so not the time on 2 free cores. `--channels-last`: a step
    of this net ~1.25x as fast on one CPU thread (0.42 -> 0.34 s, 2 crops, 2026-12-04)."""
    return [
        "--model", model, "--preset", "fast", "--lr", "3e-4", "--width", "0.25",
        "--class-weights", "balanced-sqrt", "--crop-size", "96", "--flip", "--batch-size", "4",
        "--iterations", str(iterations), "--eval-every", str(max(iterations // 2, 1)),
        "--channels-last",
    ]  # fmt: skip


def summary(root: Path, tracking: str, seconds: float) -> None:
    checkpoint, masks, parquet = root / "runs" / "demo" / "best", root / "masks", root / "parquet"
    shown = sorted((root / "overlays").rglob("*.png"))[:3]
    print(f"""
=== done in {seconds:.0f} s. Where everything is:
  generated dataset   {root / "data"}  (class list: {root / "classes.txt"})
  Parquet dataset     {parquet}/{{train,val,unlabeled}}/  (summary: {parquet}/_SUCCESS)
  best checkpoint     {checkpoint}/  (model.pt + config.json)
  MLflow runs         {tracking}  (experiment 'fcn-demo', model 'fcn-demo')
  masks               {masks}/  (state: _state/, per-run manifests: _runs/,
                      drift report and labeling queue: _reports/)
  overlays            {root / "overlays"}/  (each image blended with its mask, and a legend;
                      open a few: {", ".join(p.name for p in shown)})
The numbers are from minutes of training from random weights on small synthetic images; the
paper's 62-65% mean IU needs ImageNet weights and PASCAL VOC (see README).

=== try next (docs/after-demo.md explains each):
  export MLFLOW_TRACKING_URI={tracking}
  .venv/bin/mlflow ui --backend-store-uri {tracking}     # then open the address it prints
  .venv/bin/python jobs/evaluate.py --data {parquet} --split val \\
      --model models:/fcn-demo@champion
  .venv/bin/python jobs/segment.py --input {root / "data" / "unlabeled"} \\
      --output {root / "masks2"} --model models:/fcn-demo@champion \\
      --save-overlays {root / "overlays2"}
  .venv/bin/python jobs/compare.py --experiment fcn-demo --output {root / "compare"}""")


if __name__ == "__main__":
    sys.exit(main())
