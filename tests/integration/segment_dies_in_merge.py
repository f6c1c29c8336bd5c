"""Test-only entry point: jobs/segment.py whose process dies, as a SIGKILL would leave it, right
after the state merge wrote its new snapshot and before it deleted the files it folded.

    ray job submit --working-dir . -- python tests/integration/segment_dies_in_merge.py ARGS

The product has no hook for this: the drill wraps `fcn.nightly.state.write_snapshot` (the merge
looks it up on the module at call time) and then runs jobs/segment.py itself, unchanged.
"""

import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from fcn.nightly import state  # noqa: E402

_write_snapshot = state.write_snapshot


def _write_then_die(snapshot, table) -> None:
    _write_snapshot(snapshot, table)
    os._exit(137)  # no cleanup, no finally blocks: what a SIGKILL here leaves behind


state.write_snapshot = _write_then_die
sys.argv = [str(REPO / "jobs" / "segment.py"), *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
