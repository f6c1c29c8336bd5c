"""Does the labeling queue beat random? Rounds of (segment the pool -> queue K -> the oracle
labels the queue -> the cycle: ingest, fine-tune from the champion, evaluate, the registry's
rule) in the simulated world (fcn.data.world, docs/active-learning.md), for each
`--queue-strategy` and several world seeds, from the same seed set and round-0 champion.

Everything runs in this process with a local Ray and a local MLflow store (sqlite), through
the jobs' library calls: fcn.data.ingest, fcn.training.driver, fcn.nightly.driver (the segment
job, `--force` each round so the whole remaining pool is ranked by the current champion),
fcn.cycle.job. Writes results/active_learning.md (the table) and results/active_learning.png
(mean IU against labeled images, mean and spread over seeds).

    nice -n 19 python benchmarks/active_learning.py            # the recorded run
    python benchmarks/active_learning.py --seeds 1 --rounds 1 --pool 40 --queue 4  # a smoke

Measured numbers: the champion's val mean IU after each round (the registry's mean IU of the
champion version: promotion needs a higher one, so the curve never falls), the round's own
fine-tune's mean IU and its IU on the rare classes, and each queue's near-duplicate share.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STRATEGIES = ("random", "entropy", "diverse")
MODEL = ["fcn8s", 0.25]  # the demo's quarter-width FCN-8s: trains on a CPU
RARE_NAMES = ("bicycle", "dog")


@dataclasses.dataclass
class Point:
    strategy: str
    seed: int
    round: int
    labels: int  # labeled images beyond the seed set
    champion_iu: float
    round_iu: float | None  # the round's fine-tune (None in round 0)
    rare_iu: dict
    duplicates: float | None  # the queue's near-duplicate share


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", type=int, default=320)
    p.add_argument("--queue", type=int, default=20, help="K: images labeled per round")
    p.add_argument("--train", type=int, default=16, help="seed set size")
    p.add_argument("--val", type=int, default=60)
    p.add_argument("--seed-iterations", type=int, default=120)
    p.add_argument("--iterations", type=int, default=40, help="fine-tune steps per round")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--work", default=None, help="working folder (default: a temp dir)")
    p.add_argument("--output", default=str(REPO / "results" / "active_learning"))
    return p.parse_args(argv)


def train_flags(iterations: int) -> dict:
    return dict(
        preset="fast", lr=3e-4, batch_size=4, class_weights="balanced-sqrt",
        iterations=iterations, eval_every=iterations, workers=1, cpus_per_worker=1.0, threads=2,
    )  # fmt: skip
    # One logical CPU reserved, two torch threads: the process's local Ray is started by the
    # first ingest with one logical CPU per core (2 here), and a worker reserving both left
    # none for Ray Data's reads, so training waited forever for its first batch.


def seed_champion(args, work: Path, seed: int, names: list[str]):
    """Ingest the world's seed and val sets, train the round-0 model, and make it the champion
    of every strategy's registered model (one training, the same weights for all)."""
    from fcn import tracking
    from fcn.config import IngestConfig, TrainConfig
    from fcn.data import ingest
    from fcn.data import world as simulated
    from fcn.training import driver

    world = simulated.make(seed, pool=args.pool, train=args.train, val=args.val)
    voc, data = work / f"s{seed}" / "voc", work / f"s{seed}" / "data"
    world.write_labeled(str(voc))
    pool = world.write_pool(str(work / f"s{seed}" / "pool"))
    ingest.run(ingest.check_config(IngestConfig(output=str(data), voc=str(voc),
                                                classes=str(voc / "classes.json"))))  # fmt: skip
    config = TrainConfig(
        data=str(data), model=MODEL[0], width=MODEL[1], storage=str(work / "runs"),
        name=f"seed-{seed}", experiment="active-learning", registered_model=names[0], seed=seed,
        **train_flags(args.seed_iterations),
    )  # fmt: skip
    result = driver.run(driver.validate(config))
    for name in names[1:]:  # the same checkpoint, champion of each strategy's model
        version = tracking.register_version(
            result.run_id, _local(result.best_checkpoint), name,
            {tracking.TAG_MEAN_IU: f"{result.best_mean_iu:.6f}"},
        )  # fmt: skip
        tracking.promote(name, version)
    return world, data, pool, result


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def rare_iu(run_id: str) -> dict:
    from fcn import tracking

    metrics = tracking.client().get_run(run_id).data.metrics
    return {n: metrics.get(f"iu_{n}") for n in RARE_NAMES}


def one_round(args, work, world, data, strategy, seed, r, name) -> Point:
    from fcn import storage, tracking
    from fcn.config import CycleConfig, SegmentConfig
    from fcn.cycle import job as cycle
    from fcn.data import world as simulated
    from fcn.nightly import driver as segment

    base = work / f"s{seed}" / strategy
    night = segment.run(SegmentConfig(
        input=str(work / f"s{seed}" / "pool"), output=str(base / "masks"),
        model=f"models:/{name}@champion", queue_size=args.queue, queue_strategy=strategy,
        queue_seed=seed, force=True, threads=2, cpus_per_actor=1.0,
    ))  # fmt: skip
    labeled = simulated.answer(
        world,
        storage.read_bytes(f"{night.report}/cvat.zip"),
        str(base / "labels" / f"{strategy}-r{r:02d}"),
    )
    result = cycle.run(CycleConfig(
        data=str(data), labels=str(base / "labels"), registered_model=name,
        storage=str(work / "runs"), name=f"{strategy}-{seed}", experiment="active-learning",
        evaluate=False, seed=seed, **{k: v for k, v in train_flags(args.iterations).items()},
    ))  # fmt: skip
    champion = tracking.champion_mean_iu(name)
    duplicates = simulated.near_duplicate_share(world, labeled)
    rare = rare_iu(result.train_run_id)
    return Point(strategy, seed, r, result.labeled_images, champion[1], result.mean_iu, rare,
                 duplicates)  # fmt: skip


def main(argv=None) -> int:
    args = parse(argv)
    strategies = args.strategies.split(",")
    work = Path(args.work or tempfile.mkdtemp(prefix="fcn-al-"))
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    points: list[Point] = []
    started = time.time()
    for seed in range(args.seeds):
        names = [f"al-{s}-{seed}" for s in strategies]
        world, data, _, first = seed_champion(args, work, seed, names)
        rare0 = rare_iu(first.run_id)
        for strategy, name in zip(strategies, names, strict=True):
            points.append(Point(strategy, seed, 0, 0, first.best_mean_iu, None, rare0, None))
            for r in range(1, args.rounds + 1):
                points.append(one_round(args, work, world, data, strategy, seed, r, name))
                print(json.dumps(dataclasses.asdict(points[-1])), flush=True)
    seconds = time.time() - started
    write(args, points, seconds)
    return 0


def needed(curve: list[tuple[int, float]], target: float) -> float | None:
    """Labels at which a monotone (labels, mean IU) curve first reaches `target`, linearly
    interpolated between rounds; None when it never does."""
    for (l0, m0), (l1, m1) in zip(curve, curve[1:], strict=False):
        if m1 >= target:
            return l0 if m0 >= target else l0 + (l1 - l0) * (target - m0) / (m1 - m0)
    return curve[0][0] if curve and curve[0][1] >= target else None


def summary(points: list[Point], strategies: list[str]) -> list[dict]:
    rows, seeds = [], sorted({p.seed for p in points})
    for strategy in strategies:
        saved, finals, dups, rare = [], [], [], {n: [] for n in RARE_NAMES}
        for seed in seeds:
            mine = sorted((p for p in points if (p.strategy, p.seed) == (strategy, seed)),
                          key=lambda p: p.round)  # fmt: skip
            base = sorted((p for p in points if (p.strategy, p.seed) == ("random", seed)),
                          key=lambda p: p.round)  # fmt: skip
            if not mine or not base:
                continue
            target, budget = base[-1].champion_iu, base[-1].labels
            reached = needed([(p.labels, p.champion_iu) for p in mine], target)
            saved.append(None if reached is None else 1 - reached / budget if budget else 0.0)
            finals.append(mine[-1].champion_iu)
            dups += [p.duplicates for p in mine if p.duplicates is not None]
            for n in RARE_NAMES:
                rare[n] += [p.rare_iu.get(n) for p in mine[-1:] if p.rare_iu.get(n) is not None]
        rows.append({"strategy": strategy, "saved": saved, "final": finals, "dups": dups,
                     "rare": rare})  # fmt: skip
    return rows


def _ms(values: list[float]) -> str:
    if not values:
        return "-"
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}"


def write(args, points: list[Point], seconds: float) -> None:
    strategies = args.strategies.split(",")
    rows = summary(points, strategies)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(points, strategies, out.with_suffix(".png"))
    lines = [
        "# Active learning: does the labeling queue beat random?",
        "",
        f"`nice -n 19 python benchmarks/active_learning.py {' '.join(sys.argv[1:])}` "
        f"({seconds / 60:.0f} min). World: docs/active-learning.md (pool {args.pool}, seed "
        f"set {args.train}, val {args.val}); {args.rounds} rounds of K = {args.queue}; model "
        f"{MODEL[0]} width {MODEL[1]}, {args.seed_iterations} steps from scratch, then "
        f"{args.iterations} fine-tune steps a round; seeds 0..{args.seeds - 1}.",
        "",
        f"![mean IU against labeled images]({out.with_suffix('.png').name})",
        "",
        "| strategy | labels saved to reach random's final mean IU (per seed) | final champion "
        "mean IU | rare-class IU (final round) | near-duplicate share of queues |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        saved = ", ".join("not reached" if s is None else f"{100 * s:.0f} %" for s in row["saved"])
        rare = "; ".join(f"{n} {_ms(v)}" for n, v in row["rare"].items())
        dups = f"{100 * statistics.mean(row['dups']):.1f} %" if row["dups"] else "-"
        lines.append(f"| {row['strategy']} | {saved} | {_ms(row['final'])} | {rare} | {dups} |")
    lines += ["", "Every round (champion mean IU after the round; the round's own fine-tune):", "",
              "| strategy | seed | round | labels | champion mean IU | fine-tune mean IU | "
              "near-duplicates |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for p in points:
        fine = "-" if p.round_iu is None else f"{p.round_iu:.3f}"
        dup = "-" if p.duplicates is None else f"{100 * p.duplicates:.0f} %"
        lines.append(f"| {p.strategy} | {p.seed} | {p.round} | {p.labels} | "
                     f"{p.champion_iu:.3f} | {fine} | {dup} |")  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps([dataclasses.asdict(p) for p in points]))
    print("\n".join(lines))


def plot(points: list[Point], strategies: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for strategy in strategies:
        mine = [p for p in points if p.strategy == strategy]
        rounds = sorted({p.round for p in mine})
        xs = [statistics.mean(p.labels for p in mine if p.round == r) for r in rounds]
        ys = [np.array([p.champion_iu for p in mine if p.round == r]) for r in rounds]
        mean = np.array([y.mean() for y in ys])
        std = np.array([y.std() for y in ys])
        ax.plot(xs, mean, marker="o", label=strategy)
        ax.fill_between(xs, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("labeled images beyond the seed set")
    ax.set_ylabel("champion mean IU (val)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
