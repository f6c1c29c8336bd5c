"""Acceptance of the labeling loop's cycle (issue 27) on real services, through `ray job
submit`: a champion (version 1: random weights, registered as imported ones) and the
simulated world's seed set (fcn.data.world) ingested; then two rounds of segment the pool ->
queue -> the oracle labels the queue's cvat.zip with the true masks -> jobs/cycle.py (ingest
the new export, fine-tune from the champion on seed + every export, evaluate on the fixed val
split, promotion by the registry's rule). Round 2's queue holds none of round 1's images, and
round 2 ingests only round 2's export but trains on both, each image counted once (the
checkpoint's class distribution, the MLflow run's dataset inputs).

Tiny on purpose (2 CPU cores): 64 px images, FCN-32s at 1/16 width, 2 optimizer steps per
training: this tests the plumbing, not that the labels help (benchmarks/active_learning.py
measures that).
"""

from __future__ import annotations

import io
import json
import re

import pyarrow.parquet as pq
import pytest
from helpers_data import register_random_champion

from fcn import storage, tracking
from fcn.data import world as simulated
from fcn.engine import checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL_NAME = "cycle-it"
QUEUE = 4
TINY = ["--iterations", "2", "--eval-every", "2", "--workers", "1", "--cpus-per-worker", "1",
        "--batch-size", "2"]  # fmt: skip


def run_ok(ray_head, args: list[str], env: dict) -> str:
    rc, logs = ray_head.submit(args, env=env)
    assert rc == 0, logs[-4000:]
    return logs


def line_after(logs: str, prefix: str) -> str:
    return next(line for line in logs.splitlines() if line.startswith(prefix))


def queue_of(logs: str) -> tuple[str, list[str]]:
    """(the report folder, the queued uris) of a segment run."""
    report = line_after(logs, "report:").split()[1]
    table = pq.read_table(io.BytesIO(storage.read_bytes(f"{report}/queue.parquet")))
    return report, table.column("uri").to_pylist()


def mean_iu(version) -> float:
    return float(version.tags[tracking.TAG_MEAN_IU])


@pytest.mark.timeout(1800)  # 6 submissions, 2 of them ingest + train + evaluate
def test_two_rounds_of_the_cycle_label_ingest_train_evaluate_and_promote_by_the_rule(
    s3, mlflow_server, ray_head, tmp_path
):
    env = {**s3.env, **mlflow_server.env}
    world = simulated.make(seed=0, pool=16, train=6, val=6)
    voc, pool = s3.uri("cycle-it/voc"), s3.uri("cycle-it/pool")
    data, labels, masks = (
        s3.uri("cycle-it/data"),
        s3.uri("cycle-it/labels"),
        s3.uri("cycle-it/masks"),
    )
    world.write_labeled(voc)
    world.write_pool(pool)
    run_ok(ray_head, ["jobs/ingest.py", "--voc", voc, "--classes", f"{voc}/classes.json",
                      "--output", data], env)  # fmt: skip
    # Version 1 and champion: random weights registered as imported ones (no val digest, no
    # mean IU): round 1's fine-tune replaces it by the rule, round 2's must beat round 1's on
    # the same val digest. Training it on the seed set would cost a third training and prove
    # nothing more here.
    register_random_champion(tmp_path / "seed-model", MODEL_NAME, "cycle-it",
                             simulated.CLASSES, width=0.0625)  # fmt: skip
    client = tracking.client(mlflow_server.uri)
    segment = ["jobs/segment.py", "--input", pool, "--output", masks, "--model",
               f"models:/{MODEL_NAME}@champion", "--queue-size", str(QUEUE)]  # fmt: skip
    cycle = ["jobs/cycle.py", "--data", data, "--labels", labels, "--registered-model",
             MODEL_NAME, "--storage", s3.uri("cycle-it/runs"), "--experiment", "cycle-it",
             *TINY]  # fmt: skip

    # Round 1: a seeded random queue, labeled by the oracle, the cycle on it.
    report, first = queue_of(run_ok(ray_head, [*segment, "--queue-strategy", "random"], env))
    assert len(first) == QUEUE
    labeled = simulated.answer(world, storage.read_bytes(f"{report}/cvat.zip"), f"{labels}/round1")
    assert labeled == [u.rsplit("/", 1)[-1][:-4] for u in first]
    # The evaluation in the cycle job's own process (--eval-workers 0: no second Ray Train run)
    # gives the mean IU the training registered for the same version on the same split.
    logs = run_ok(ray_head, [*cycle, "--eval-workers", "0"], env)
    assert "ingested this turn: round1" in logs, logs[-3000:]
    assert f"labeled images ingested in all: {QUEUE}" in logs
    _check_rule(client, logs, "2", previous="1")
    scored = re.search(r"evaluation run \w+: mean IU ([0-9.]+)", logs)
    assert scored, logs[-3000:]
    registered = mean_iu(client.get_model_version(MODEL_NAME, "2"))
    assert float(scored.group(1)) == pytest.approx(registered, abs=1e-4)
    assert storage.exists(f"{data}/labeled/round1/_SUCCESS")

    # Round 2: every image segmented again by the champion now (--force); the queue leaves out
    # what round 1 queued. The cycle ingests round 2 alone and trains on seed + both.
    rc_logs = run_ok(ray_head, [*segment, "--queue-strategy", "entropy", "--force"], env)
    report, second = queue_of(rc_logs)
    assert len(second) == QUEUE and not set(second) & set(first)
    simulated.answer(world, storage.read_bytes(f"{report}/cvat.zip"), f"{labels}/round2")
    champion_before = tracking.champion_version(MODEL_NAME, mlflow_server.uri).version
    logs = run_ok(ray_head, [*cycle, "--no-evaluate"], env)
    assert "ingested this turn: round2" in logs and "round1," not in logs.split("this turn:")[1]
    assert f"labeled images ingested in all: {2 * QUEUE}" in logs
    _check_rule(client, logs, "3", previous=champion_before)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("cycle-it").experiment_id],
        filter_string="attributes.run_name = 'cycle-round2'",
    )
    assert run.data.params["train_split"].count("labeled/round") == 2
    # The seed split and both exports, each image counted once, in the checkpoint's class
    # distribution and in the run's MLflow dataset inputs.
    retrained = checkpoint.load_config(s3.uri("cycle-it/runs/cycle-round2/best"))
    assert retrained.class_distribution["images"] == len(world.train) + 2 * QUEUE
    inputs = [i.dataset.source for i in run.inputs.dataset_inputs if _context(i) == "train"]
    assert sorted(json.loads(s)["uri"] for s in inputs) == [
        f"{data}/labeled/round1/default", f"{data}/labeled/round2/default", f"{data}/train"
    ]  # fmt: skip


def _context(dataset_input) -> str:
    return next(t.value for t in dataset_input.tags if t.key == tracking.DATASET_CONTEXT)


def _check_rule(client, logs: str, version: str, previous: str) -> None:
    """The champion after the turn is what the registry's rule says: over a champion with no
    recorded validation data (round 1's) the new version wins; over one validated on the same
    digest, only with a higher mean IU."""
    new = client.get_model_version(MODEL_NAME, version)
    old = client.get_model_version(MODEL_NAME, previous)
    if tracking.TAG_VAL_DIGEST not in old.tags:
        expected = version
    else:
        assert new.tags[tracking.TAG_VAL_DIGEST] == old.tags[tracking.TAG_VAL_DIGEST]
        expected = version if mean_iu(new) > mean_iu(old) else previous
    champion = client.get_model_version_by_alias(MODEL_NAME, tracking.CHAMPION).version
    assert champion == expected, (mean_iu(new), old.tags)
    assert f"champion is version {expected}" in logs
    assert ("not promoted" in logs) == (expected == previous)
