"""Test-only training hook: lose the last worker once, right after a checkpoint, as a lost node
would. Production never loads it.

`make_hook` gives the `fcn.training.context.TrainHook` that tests/integration/train_with_drill.py
(jobs/train.py plus this hook) passes to `fcn.training.driver.run`. A Ray Train
`UserCallback` on the controller writes `<run_dir>/_registered/<checkpoint dir>` when Ray Train
has registered a checkpoint (a restart resumes from it from then on): tests wait on these
markers, not on Ray Train's own files. With FCN_FAULT_AT_ITERATION=N the last of several
workers exits before step N + 1, once the checkpoint before N is registered: without that wait,
a worker exiting a few fast steps after the report can beat the controller to it and the group
restarts from zero. A `_fault_injected` marker makes the drill happen once per run.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import ray.train

from fcn import storage

AT_ENV = "FCN_FAULT_AT_ITERATION"
REGISTERED = "_registered"
DONE = "_fault_injected"
WAIT_SECONDS = 300

log = logging.getLogger("fcn.train")


def registered_marker(run_dir: str, iteration: int) -> str:
    return storage.join(run_dir, f"{REGISTERED}/checkpoint_{iteration:06d}")


class MarkRegistered(ray.train.UserCallback):
    """Runs on the controller after it has taken in every worker's report."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is not None:
            name = os.path.basename(checkpoint.path.rstrip("/"))
            storage.write_text(storage.join(self.run_dir, f"{REGISTERED}/{name}"), "registered\n")


@dataclass(frozen=True)
class Drill:
    run_dir: str
    at: int | None  # exit before step at + 1; None: only mark registered checkpoints
    last_checkpoint: int

    @property
    def callbacks(self) -> list:
        return [MarkRegistered(self.run_dir)]

    def before_step(self, iteration: int, rank: int, world: int) -> None:
        if iteration != self.at or rank != world - 1 or world < 2:
            return
        done = storage.join(self.run_dir, DONE)
        if storage.exists(done):
            return
        marker = registered_marker(self.run_dir, self.last_checkpoint)
        deadline = time.monotonic() + WAIT_SECONDS
        while self.last_checkpoint and not storage.exists(marker):
            if time.monotonic() > deadline:
                raise RuntimeError(f"fault drill: {marker} not written in {WAIT_SECONDS} s")
            time.sleep(0.5)
        storage.write_text(done, f"worker {rank} exited at iteration {iteration}\n")
        log.info(f"[fault injection] worker {rank} exits at iteration {iteration}")
        os._exit(1)


def make_hook(run_dir: str, config) -> Drill:
    at = int(os.environ[AT_ENV]) if os.environ.get(AT_ENV) else None
    last = (at or 0) // config.eval_every * config.eval_every
    return Drill(run_dir, at, last)
