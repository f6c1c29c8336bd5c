"""Evaluate a checkpoint or registered model on a split, sharded over Ray Train workers.

    python jobs/evaluate.py --data DATA_URI --split val --model models:/fcn@champion
    ray job submit --working-dir . -- python jobs/evaluate.py --data s3://... --model s3://.../best

Every image of the split is scored exactly once; the confusion matrix is summed over the
workers. Logs an MLflow evaluation run (experiment --experiment) with the scores.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import EvaluateConfig, parse  # noqa: E402


def main(argv=None) -> int:
    config = parse(EvaluateConfig, argv, description=__doc__)
    from fcn import evaluate, tracking
    from fcn.runtime import init_ray

    needed = int(config.workers * config.cpus_per_worker + 1)
    init_ray(num_cpus=max(os.cpu_count() or 1, needed))
    scores = evaluate.run(config)
    images = int(scores["hist"].sum())
    print(f"{config.model} on {config.split}: {images} labeled pixels")
    for name in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        print(f"  {name:>9}: {scores[name]:.4f}")
    print(f"MLflow evaluation run {scores['run_id']} at {tracking.tracking_uri()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
