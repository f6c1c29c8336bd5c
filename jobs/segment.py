"""Segment every new or changed image under a prefix; masks, a state table and a per-run
manifest go to --output; with --save-overlays, each image blended with its mask too.

Runs on the Ray cluster named by RAY_ADDRESS (as a `ray job submit` entry point), or starts a
local Ray when none is set. Exit status 1 when the error fraction exceeds
--max-error-fraction, so a scheduler sees a bad night; 2 with one line when the settings, the
model or the input cannot work (checked before Ray starts); 3 when the night's class
distribution drifted past --drift-threshold (docs/insight.md). docs/nightly.md: the state, the
nightly budget and the model-change option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import SegmentConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/segment.py --input demo/data/unlabeled --output demo/masks2 \\
      --model models:/fcn-demo@champion --save-overlays demo/overlays2   # after make demo
  python jobs/segment.py --input s3://bucket/images/ --output s3://bucket/masks/ \\
      --model models:/fcn-voc@champion --max-images 100000              # a nightly run
  ray job submit --working-dir . -- python jobs/segment.py --input s3://... --output s3://..."""


def main(argv=None) -> int:
    config = parse(SegmentConfig, argv, description=__doc__, epilog=EXAMPLES)
    # Imported after parsing: `--help` and a bad flag answer without loading torch and Ray.
    from fcn.nightly.driver import run
    from fcn.nightly.summary import EXIT_SETTINGS, exit_status, print_summary

    try:
        summary = run(config)
    except (ValueError, FileNotFoundError) as err:  # settings, model contract, empty input
        print(f"error: {err}", file=sys.stderr)
        return EXIT_SETTINGS
    print_summary(summary)
    return exit_status(summary)


if __name__ == "__main__":
    sys.exit(main())
