"""The typed seams of a training run: what `validate` hands `run` (TrainSetup), what the driver
hands every worker (RunContext, pickled through Ray with the config), and a test's hook into
the run (TrainHook)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol

from fcn.config import TrainConfig, to_dict
from fcn.engine import optim
from fcn.engine.classes import ClassList
from fcn.training.dataset import WorkerRows

STATE_FILE = "training_state.pt"  # beside a checkpoint: optimizer and progress (weights_only)


class TrainHook(Protocol):
    """A test's hook into a run (tests/integration/fault_drill.py loses a worker on demand);
    production passes none. It reaches the workers pickled, so its class must be importable
    there by its module name."""

    @property
    def callbacks(self) -> list:
        """ray.train.UserCallback objects for Ray Train's controller."""
        ...

    def before_step(self, iteration: int, rank: int, world: int) -> None:
        """Called in every worker before each step."""
        ...


@dataclass(frozen=True)
class TrainSetup:
    """A checked training job (`driver.validate`), what `driver.run` takes: the checks, and
    the reads of the initial weights they need, happen once, in the driver."""

    config: TrainConfig  # num_classes resolved, local paths absolute, a models:/ alias pinned
    classes: ClassList
    recipe: optim.Recipe
    spec: dict  # the input preprocessing of the initial weights (data is normalized with it)


@dataclass(frozen=True)
class RunContext:
    """What the driver resolved once for every worker (pickled through Ray with the config)."""

    run_id: str
    tracking_uri: str
    run_dir: str
    spec: dict  # the input preprocessing of the initial weights
    classes: ClassList
    class_weights: tuple[float, ...] | None
    hook: TrainHook | None = None  # a test's, see TrainHook
    # The training masks' Distribution.to_dict(), saved in every checkpoint.
    class_distribution: dict | None = None
    # A small split's rows for the workers to transform themselves (--loader); None: Ray Data.
    train_rows: WorkerRows | None = None


def tracking_params(config: TrainConfig, recipe: optim.Recipe) -> dict:
    """Every setting, the preset resolved (what actually trained): MLflow params, config.json."""
    recipe_fields = dataclasses.asdict(recipe)
    return {**to_dict(config), **{f"recipe.{k}": v for k, v in recipe_fields.items()}}
