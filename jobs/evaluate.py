"""Evaluate a checkpoint or registered model on a split, sharded over Ray Train workers.

Every image of the split is scored exactly once; the confusion matrix is summed over the
workers. Logs an MLflow evaluation run (experiment --experiment) with the scores. The split,
the model and the flags are checked before Ray starts: a problem exits with status 2 and one
line saying what to fix.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import EvaluateConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/evaluate.py --data demo/parquet --split val \\
      --model models:/fcn-demo@champion                    # after make demo
  python jobs/evaluate.py --data s3://bucket/voc --split seg11valid \\
      --model s3://bucket/runs/voc-8s/best --workers 4 --gpu
  ray job submit --working-dir . -- python jobs/evaluate.py --data s3://... --model models:/..."""


def main(argv=None) -> int:
    try:
        config = parse(EvaluateConfig, argv, description=__doc__, epilog=EXAMPLES)
        from fcn.evaluation import job as evaluate_job  # after parsing: --help needs no torch

        config = evaluate_job.validate(config)
    except (ValueError, FileNotFoundError) as err:  # the checks' own one-line messages
        print(f"error: {err}", file=sys.stderr)
        return 2
    from fcn import tracking
    from fcn.engine.metrics import SCORE_NAMES

    scores = evaluate_job.run(config)
    pixels = int(scores["hist"].sum())
    print(f"{config.model} on {config.split}: {pixels} labeled pixels")
    for name in SCORE_NAMES:
        print(f"  {name:>9}: {scores[name]:.4f}")
    print(f"MLflow evaluation run {scores['run_id']} at {tracking.redact(tracking.tracking_uri())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
