"""Show a segment experiment's nightly drift and labeling-queue history: a table (Markdown and
CSV) and the drift distance over the nights (PNG), from the MLflow runs jobs/segment.py logged.

Reads MLFLOW_TRACKING_URI (or --tracking-uri). Exit status 2 with one line (`error: ...`) when
the experiment does not exist or a setting cannot work (an --output URI that carries
credentials). docs/insight.md explains the numbers.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import parse  # noqa: E402
from fcn.nightly.report import ReportConfig, markdown, write  # noqa: E402

EXAMPLES = """examples:
  python jobs/report.py --experiment segment --output s3://bucket/reports/nightly
  MLFLOW_TRACKING_URI=http://mlflow:5000 python jobs/report.py --experiment segment \\
      --output ./results/nightly"""


def main(argv=None) -> int:
    config = parse(ReportConfig, argv, description=__doc__, epilog=EXAMPLES)
    try:
        table, written = write(config)
    except (LookupError, ValueError) as err:  # no such experiment, a refused --output
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(table)} night(s) of experiment {config.experiment!r}:\n")
    print(markdown(table))
    for name, uri in written.items():
        print(f"{name:>12}: {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
