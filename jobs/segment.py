"""Segment every new or changed image under a prefix; masks and a manifest go to --output.

    python jobs/segment.py --input s3://bucket/images/ --output s3://bucket/masks/ \
        --model models:/fcn-voc@champion

Runs on the Ray cluster named by RAY_ADDRESS (as a `ray job submit` entry point), or starts a
local Ray when none is set. Exit status 1 when the error fraction exceeds
--max-error-fraction, so a scheduler sees a bad night.
"""

import sys

from fcn.config import SegmentConfig, parse
from fcn.segment import print_summary, run


def main(argv=None) -> int:
    config = parse(SegmentConfig, argv)
    summary = run(config)
    print_summary(summary)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
