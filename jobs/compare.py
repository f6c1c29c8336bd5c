"""Compare an experiment's training runs: a table sorted by best mean IU, plots, champion.

--promote moves the alias only between versions validated on the same data (their val digest);
otherwise it says why and exits with 2, after writing the comparison. --history prints every
move of a registered model's champion alias; --rollback moves it back in one command and
records it (docs/mlflow.md).

Reads MLFLOW_TRACKING_URI (or --tracking-uri); with neither, MLflow's local store.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import CompareConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/compare.py --experiment fcn-demo --output demo/compare   # after make demo
  python jobs/compare.py --experiment fcn-voc --output s3://bucket/reports/fcn-voc
  python jobs/compare.py --experiment fcn-voc --promote   # champion -> best finished run
  python jobs/compare.py --history --registered-model fcn-voc   # every champion move
  python jobs/compare.py --rollback --registered-model fcn-voc --reason "v7 paints roads as sky"
  python jobs/compare.py --rollback --registered-model fcn-voc --to 5 --reason "..." --force"""


def main(argv=None) -> int:
    config = parse(CompareConfig, argv, description=__doc__, epilog=EXAMPLES)
    from mlflow.exceptions import MlflowException

    try:
        if config.history or config.rollback:
            return champion(config)
        return comparison(config)
    except (LookupError, ValueError) as err:  # no such experiment, no runs, nothing to promote
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:  # an unreachable or refusing tracking server
        print(f"error: the tracking server failed: {err.message}", file=sys.stderr)
        return 1


def champion(config: CompareConfig) -> int:
    from fcn.compare import champion

    if config.history:
        found = champion.history(config)
        print(f"champion history of {found.model_name} ({len(found.moves)} moves, oldest first):\n")
        print(champion.to_markdown(found))
        return 0
    move = champion.rollback(config)
    forced = " (forced: " + move.overridden + ")" if move.forced else ""
    print(f"champion: {move.model_name} version {move.to_version}, rolled back from "
          f"{move.from_version}{forced}; recorded as run {move.record_run_id}")  # fmt: skip
    return 0


def comparison(config: CompareConfig) -> int:
    from fcn.compare import compare
    from fcn.compare.table import to_markdown

    result = compare(config)
    print(f"{len(result.rows)} run(s) in experiment {config.experiment!r}, best first:\n")
    print(to_markdown(result.rows, result.settings))
    for name, uri in result.outputs.items():
        print(f"{name:>20}: {uri}")
    if result.comparison_run_id:
        print(f"comparison run: {result.comparison_run_id} (artifacts under comparison/)")
    if result.promotion:
        p = result.promotion
        print(
            f"champion: {p.registered_model} version {p.version} (run {p.run_id}); "
            f"was {p.previous_version or 'unset'}"
        )
    if result.refusal:
        print(f"error: champion unchanged: {result.refusal}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
