"""Ingest VOC / SBD / unlabeled images into validated Parquet shards (Ray Data).

    python jobs/ingest.py --voc ROOT --sbd ROOT --unlabeled URI --output URI
    ray job submit --working-dir . -- python jobs/ingest.py --sbd s3://... --output s3://...

Any source may be given alone. Connects to RAY_ADDRESS when set, else starts Ray locally.
"""

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import IngestConfig, parse  # noqa: E402
from fcn.data.ingest import ERRORS, SUCCESS, run  # noqa: E402


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = parse(IngestConfig, argv, description=__doc__)
    summary = run(config)
    output = config.output.rstrip("/")
    print(json.dumps({k: summary[k] for k in ("written", "rejected", "rejected_by_reason")}))
    for split, counts in summary["splits"].items():
        print(
            f"{split:>12}: {counts['written']} rows in {counts['shards']} shard(s) "
            f"-> {output}/{split}/  ({counts['rejected']} rejected)"
        )
    if summary["rejected"]:
        print(f"rejected inputs (uri, reason, detail): {output}/{ERRORS}/")
    print(f"summary: {output}/{SUCCESS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
