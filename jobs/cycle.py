"""The weekly retrain: ingest the labeled exports not yet ingested, fine-tune the champion on
the grown labeled set, evaluate the new version on the fixed validation split, and let the
registry's champion rule decide promotion (docs/insight.md, "Closing the loop").

Connects to RAY_ADDRESS when set, else starts Ray locally; logs to MLFLOW_TRACKING_URI. A week
with no new export trains nothing (exit 0). Settings, the data and the champion are checked
before Ray starts: a problem exits with status 2 and one line.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import CycleConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/cycle.py --data s3://bucket/voc --labels s3://bucket/labels \\
      --registered-model fcn --storage s3://bucket/runs      # each folder under labels/ is
                                                              # a CVAT export, unzipped
  ray job submit --working-dir . -- python jobs/cycle.py --data s3://... --labels s3://..."""


def main(argv=None) -> int:
    config = parse(CycleConfig, argv, description=__doc__, epilog=EXAMPLES)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # as jobs/train.py
    from fcn.cycle import job as cycle

    try:
        result = cycle.run(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_result(result)
    return 0


def print_result(result) -> None:
    names = ", ".join(e.name for e in result.exports) or "none"
    print(f"exports: {names}; labeled images ingested in all: {result.labeled_images}")
    before = result.previous_champion
    if before:
        print(f"champion before: version {before[0]} (mean IU {before[1]:.4f})")
    if not result.ingested:
        print("no new labeled export: nothing trained")
        return
    print(f"ingested this turn: {', '.join(result.ingested)}")
    print(f"fine-tune: MLflow run {result.train_run_id}, version {result.version}, "
          f"val mean IU {result.mean_iu:.4f}")  # fmt: skip
    if result.eval_mean_iu is not None:
        print(f"evaluation run {result.eval_run_id}: mean IU {result.eval_mean_iu:.4f}")
    verdict = "promoted" if result.promoted else "not promoted (the registry's rule)"
    print(f"version {result.version} {verdict}; champion is version {result.champion}")


if __name__ == "__main__":
    sys.exit(main())
