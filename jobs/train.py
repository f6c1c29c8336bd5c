"""Train an FCN with Ray Train (data-parallel), checkpointing to --storage and logging to MLflow.

The same --name again resumes that run (same checkpoints, same MLflow run). Connects to
RAY_ADDRESS when set, else starts Ray locally; logs to MLFLOW_TRACKING_URI, else to the local
default (./mlflow.db and ./mlruns). The dataset, the initial weights and the flags are checked
before Ray starts: a problem exits with status 2 and one line saying what to fix.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import TrainConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/train.py --data demo/parquet --name demo --experiment fcn-demo \\
      --preset fast --width 0.25 --class-weights balanced-sqrt --crop-size 96 \\
      --registered-model fcn-demo          # from scratch on a CPU, as the demo does
  python jobs/train.py --data s3://bucket/voc --storage s3://bucket/runs --init imagenet \\
      --model fcn32s --name voc-32s --workers 4 --gpu   # the paper's recipe
  ray job submit --working-dir . -- python jobs/train.py --data s3://... --storage s3://..."""


def main(argv=None) -> int:
    config = parse(TrainConfig, argv, description=__doc__, epilog=EXAMPLES)
    # Ray Data runs the training split anew every epoch: its progress bars would print a set
    # per epoch between the iteration lines, which already say how far training is.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    from fcn.training import driver as train

    try:  # a bad setting, a missing or wrong dataset, missing weights: one line, before Ray
        setup = train.validate(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_result(setup.config, train.run(setup))
    return 0


def print_result(config: TrainConfig, result) -> None:
    """Where the best checkpoint, the MLflow run and the registered version went."""
    from fcn import tracking

    print(f"best mean IU {result.best_mean_iu:.4f}")
    print(f"best checkpoint: {result.best_checkpoint}")
    if result.latest_checkpoint:
        print(f"latest checkpoint (resume state): {result.latest_checkpoint}")
    uri = tracking.tracking_uri()
    print(f"MLflow run {result.run_id} at {tracking.redact(uri)}")
    if result.model_version:
        name, version = config.registered_model, result.model_version
        print(f"registered model {name} version {version}")
        if result.champion:
            print(f"champion alias: models:/{name}@champion is version {version}")
        else:
            champion = tracking.champion_version(name, uri)
            held = f"version {champion.version}" if champion else "no version"
            print(f"champion alias not moved: models:/{name}@champion stays on {held}")
    for line in tracking.ui_links(uri, result.run_id, config.registered_model,
                                  result.model_version):  # fmt: skip
        print(line)


if __name__ == "__main__":
    sys.exit(main())
