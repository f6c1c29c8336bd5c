"""Train an FCN with Ray Train (data-parallel), checkpointing to --storage and logging to MLflow.

    python jobs/train.py --data DATA_URI --model fcn32s --storage URI --name RUN_NAME
    ray job submit --working-dir . -- python jobs/train.py --data s3://... --storage s3://...

The same --name again resumes that run (same checkpoints, same MLflow run). Connects to
RAY_ADDRESS when set, else starts Ray locally; logs to MLFLOW_TRACKING_URI, else to the local
default (./mlflow.db and ./mlruns). From scratch on a CPU (no ImageNet weights):
--preset fast --width 0.25 --class-weights balanced-sqrt, as the demo does.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import TrainConfig, parse  # noqa: E402


def main(argv=None) -> int:
    config = parse(TrainConfig, argv, description=__doc__)
    from fcn import tracking, train
    from fcn.runtime import init_ray

    try:  # a bad setting, or a class count the data disagrees with: one line, before Ray
        train.resolve(config)
    except ValueError as err:
        sys.exit(f"error: {err}")
    # A local instance needs enough logical CPUs for the workers plus Ray Data's decode tasks,
    # whatever the core count (the workers' torch threads are set separately).
    needed = config.workers * config.cpus_per_worker + 2
    init_ray(num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)))
    result = train.run(config)
    print(f"best mean IU {result.best_mean_iu:.4f}")
    print(f"best checkpoint: {result.best_checkpoint}")
    if result.latest_checkpoint:
        print(f"latest checkpoint (resume state): {result.latest_checkpoint}")
    print(f"MLflow run {result.run_id} at {tracking.tracking_uri()}")
    if result.model_version:
        role = " (champion)" if result.champion else ""
        print(f"registered model {config.registered_model} version {result.model_version}{role}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
