"""jobs/train.py with the fault drill's hook (tests/integration/fault_drill.py): the same parse,
validate, run and printout, with a hook that marks each checkpoint Ray Train has registered
and, with FCN_FAULT_AT_ITERATION=N, loses the last worker once before step N + 1.

Test-only: the integration tests submit it (`ray job submit -- python
tests/integration/train_with_drill.py ...`) where they want the drill; the product reads no
test setting.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: fcn, jobs, tests

from fcn import storage  # noqa: E402
from fcn.config import TrainConfig, parse  # noqa: E402
from jobs import train as job  # noqa: E402

# By its package path, not as `fault_drill` (this folder is sys.path[0] here): the hook is
# pickled to the workers, whose path holds the checkout (Ray's working dir), not this folder.
from tests.integration import fault_drill  # noqa: E402


def main(argv=None) -> int:
    config = parse(TrainConfig, argv, description=__doc__, epilog=job.EXAMPLES)
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # as jobs/train.py does
    from fcn.training import driver as train

    try:
        setup = train.validate(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = storage.join(setup.config.storage, setup.config.name)
    hook = fault_drill.make_hook(run_dir, setup.config)
    job.print_result(setup.config, train.run(setup, hook=hook))
    return 0


if __name__ == "__main__":
    sys.exit(main())
