"""Ingest VOC / SBD / unlabeled images into validated Parquet shards (Ray Data).

Any source may be given alone. Connects to RAY_ADDRESS when set, else starts Ray locally.
The sources and the flags are checked before Ray starts: a missing source exits with status 2
and one line, and leaves --output untouched.
"""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import IngestConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/ingest.py --voc data/VOC2012 --sbd data/SBD --unlabeled data/unlabeled \\
      --output demo/parquet
  python jobs/ingest.py --voc s3://b/VOC2011 --sbd s3://b/SBD --preset reference \\
      --output s3://b/voc-reference        # the paper's train / seg11valid split
  ray job submit --working-dir . -- python jobs/ingest.py --sbd s3://... --output s3://..."""


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = parse(IngestConfig, argv, description=__doc__, epilog=EXAMPLES)
    from fcn.data import ingest  # after parsing: --help needs no pyarrow
    from fcn.data.contract import ERRORS, SUCCESS

    try:
        checked = ingest.check_config(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = ingest.run(checked)
    counts = {
        "written": result.written,
        "rejected": result.rejected,
        "rejected_by_reason": result.rejected_by_reason,
    }
    print(json.dumps(counts))
    for split, split_counts in result.splits.items():
        print(
            f"{split:>12}: {split_counts.written} rows in {split_counts.shards} shard(s) "
            f"-> {result.output}/{split}/  ({split_counts.rejected} rejected)"
        )
    if result.rejected:
        print(f"rejected inputs (uri, reason, detail): {result.output}/{ERRORS}/")
    print(f"summary: {result.output}/{SUCCESS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
