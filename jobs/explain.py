"""Explain a mask the nightly segment job wrote: the source image and the version of it the
mask was made from, the night (run id, time), the model version, its training run, the
train/val data (digests, URIs), the git commit, and the champion history's move that made the
version champion.

Exit status 2 with one line when the mask is not one the segment job wrote (no segment
output above it names it); 1 when the tracking server fails. docs/mlflow.md.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import ExplainConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/explain.py s3://photos/masks/2026/street/0001.png
  python jobs/explain.py demo/masks/0001.png --json   # after make demo"""


def main(argv=None) -> int:
    config = parse(ExplainConfig, argv, description=__doc__, epilog=EXAMPLES)
    from mlflow.exceptions import MlflowException

    from fcn.nightly.explain import explain, to_lines

    try:
        found = explain(config)
    except (ValueError, FileNotFoundError) as err:  # not our mask, a bad URI
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:
        print(f"error: the tracking server failed: {err.message}", file=sys.stderr)
        return 1
    if config.json:
        print(json.dumps(found.to_dict(), indent=2))
    else:
        print("\n".join(to_lines(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
