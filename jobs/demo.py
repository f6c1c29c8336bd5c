"""The whole path end to end on local defaults: generate -> ingest -> train -> segment.

    make demo            # or: python jobs/demo.py [--root demo] [--iterations N]

Each step runs the real job script as a user would (`python jobs/X.py ...`), each on a local
Ray instance, logging to a local MLflow store under the demo root. A few minutes on 2 CPU
cores; everything lands under --root.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Three VOC object classes (aeroplane, bicycle, bird): enough images of each in a small
# dataset for minutes of training to show; the model still scores all 21 VOC classes.
DEMO_CLASSES = "1,2,3"


def step(title: str, args: list[str], env: dict, cwd: Path) -> None:
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    started = time.monotonic()
    # cwd = the demo root: MLflow's local artifact store (./mlruns) lands there too.
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env)
    if done.returncode != 0:
        sys.exit(f"demo step '{title}' failed (exit {done.returncode}); see its output above")
    print(f"--- {title}: {time.monotonic() - started:.0f} s", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--root", default="demo", help="where everything the demo writes goes")
    parser.add_argument("--images", type=int, default=40, help="images per generated dataset")
    parser.add_argument("--iterations", type=int, default=300, help="training iterations")
    parser.add_argument("--model", default="fcn32s", help="FCN model to train")
    args = parser.parse_args(argv)

    root = Path(args.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    data, parquet, runs = root / "data", root / "parquet", root / "runs"
    masks, mlflow_db = root / "masks", root / "mlflow.db"
    for old in (data, parquet, runs, masks):  # a demo starts clean; `make clean-demo` too
        shutil.rmtree(old, ignore_errors=True)
    env = dict(os.environ)
    # A local MLflow store inside the demo root, unless the user points at a server.
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_db}")
    started = time.monotonic()

    step("1/4 generate a small VOC + SBD layout dataset and unlabeled images", [
        "-m", "fcn.data.synthetic", "--voc", str(data / "VOC2012"), "--sbd", str(data / "SBD"),
        "--unlabeled", str(data / "unlabeled"), "--num-images", str(args.images),
        "--min-size", "64", "--max-size", "112", "--seed", "0", "--classes", DEMO_CLASSES,
    ], env, root)  # fmt: skip
    step("2/4 ingest to validated Parquet (Ray Data)", [
        str(REPO / "jobs/ingest.py"), "--voc", str(data / "VOC2012"), "--sbd", str(data / "SBD"),
        "--unlabeled", str(data / "unlabeled"), "--output", str(parquet),
    ], env, root)  # fmt: skip
    # From scratch on a CPU (no ImageNet weights can be fetched here): the `fast` preset
    # (Adam), a quarter-width VGG16 and balanced-sqrt class weights learn the synthetic
    # classes in minutes; `--preset paper` at full width is the published recipe.
    step(f"3/4 train {args.model} with Ray Train (2 workers, CPU)", [
        str(REPO / "jobs/train.py"), "--data", str(parquet), "--model", args.model,
        "--storage", str(runs),
        "--name", "demo", "--experiment", "fcn-demo", "--preset", "fast", "--width", "0.25",
        "--class-weights", "balanced-sqrt",
        "--iterations", str(args.iterations), "--eval-every", str(max(args.iterations // 2, 1)),
        "--val-limit", "8",
        "--workers", "2", "--cpus-per-worker", "1", "--registered-model", "fcn-demo",
    ], env, root)  # fmt: skip
    checkpoint = runs / "demo" / "best"
    step("4/4 segment the unlabeled images (Ray Data actor pool)", [
        str(REPO / "jobs/segment.py"), "--input", str(data / "unlabeled"), "--output", str(masks),
        "--model", str(checkpoint),
    ], env, root)  # fmt: skip

    tracking = env["MLFLOW_TRACKING_URI"]
    print(f"""
=== done in {time.monotonic() - started:.0f} s. Where everything is:
  generated dataset   {data}
  Parquet dataset     {parquet}/{{train,val,unlabeled}}/  (summary: {parquet}/_SUCCESS)
  best checkpoint     {checkpoint}/  (model.pt + config.json)
  MLflow runs         {tracking}  (experiment 'fcn-demo', model 'fcn-demo')
  masks               {masks}/  (manifest: {masks}/_manifest/)
Open the MLflow UI:
  .venv/bin/mlflow ui --backend-store-uri {tracking}   # then http://127.0.0.1:5000
The numbers are from minutes of training from random weights on tiny synthetic images; the
paper's 62-65% mean IU needs ImageNet weights and PASCAL VOC (see README).""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
