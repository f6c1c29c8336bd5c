"""The training progress line and the images/s it reports (rank 0 logs it)."""

from __future__ import annotations

import logging
import time

# Worker progress goes through logging, not print: Ray Train patches print() in workers and,
# when another library has wrapped stdout, emits every printed line twice.
log = logging.getLogger("fcn.train")
WARMUP_STEPS = 2


class Throughput:
    """images/s of the steps (input pipeline waits included), leaving out the first steps after
    a (re)start, which build the pipeline and warm the allocator; and the progress line."""

    def __init__(self, start: int, images_per_step: int, print_every: int):
        self.first, self.images_per_step, self.print_every = start, images_per_step, print_every
        self.steps, self.seconds, self.tic = 0, 0.0, 0.0
        self.began = time.perf_counter()
        self.paced: tuple[int, float] | None = None  # (iteration, time) at the first step's end

    def start(self) -> None:
        self.tic = time.perf_counter()

    def stop(self, iteration: int) -> None:
        if self.paced is None:
            self.paced = (iteration, time.perf_counter())
        if iteration - self.first > WARMUP_STEPS:
            self.steps += 1
            self.seconds += time.perf_counter() - self.tic

    def images_per_s(self) -> float:
        return self.steps * self.images_per_step / self.seconds if self.steps else 0.0

    def log(self, iteration: int, iterations: int, train_loss: float, lr: float) -> None:
        if iteration % self.print_every and iteration != iterations:
            return
        log.info(self.line(iteration, iterations, train_loss, lr, time.perf_counter()))

    def line(self, iteration: int, iterations: int, train_loss: float, lr: float, now: float):
        """`iter 6/12 (50%) loss 0.4457 lr 0.0001 3.1 images/s elapsed 0:07 eta 0:07`; the ETA
        is the remaining steps at the mean pace since the first step of this (re)start ended
        (the pipeline and model set-up before it are not a step's cost), evaluations included."""
        elapsed = now - self.began
        start_iteration, start_time = self.paced or (iteration, now)
        done = iteration - start_iteration
        eta = _clock((now - start_time) / done * (iterations - iteration)) if done else "?"
        return (f"iter {iteration}/{iterations} ({100 * iteration // iterations}%) "
                f"loss {train_loss:.4f} lr {lr:.3g} {self.images_per_s():.1f} images/s "
                f"elapsed {_clock(elapsed)} eta {eta}")  # fmt: skip


def _clock(seconds: float) -> str:
    """h:mm:ss, or m:ss under an hour; to the nearest second (a difference of two clock
    readings lands a hair under the whole second as often as on it)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
