"""The generic half of the settings: fields that carry their CLI help, the `Settings` base
(its validation convention), and the dict form saved beside checkpoints and logged as params.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Self


class Settings:
    """Base of every job's frozen settings dataclass; one validation convention for all.

    `validate()` returns the settings, or raises a ValueError whose one line names the flag;
    the job's driver calls it before Ray starts or an MLflow run exists (jobs print
    `error: <line>` and exit 2). Construction never refuses a value: `__post_init__`, where
    a class has one, only normalizes, so a config.json saved by an older version always
    rebuilds (`from_dict`) and `--help` never fails.
    """

    def validate(self) -> Self:
        return self


def setting(default, help: str, **extra):
    """A dataclass field carrying its CLI help (and optional `choices`)."""
    return field(default=default, metadata={"help": help, **extra})


def required(help: str, **extra):
    return field(metadata={"help": help, "required": True, **extra})


def placement(who: str):
    """The `--placement-resource` setting of a job whose `who` (training workers, model
    actors...) should run only on some nodes."""
    return setting(
        None, f"custom Ray resource each of the {who} asks one unit of, so they run only on the "
        "nodes started with it (`ray start --resources '{\"NAME\": N}'`, N per node); "
        "default: any node", group="cluster",
    )  # fmt: skip


def flag(name: str) -> str:
    """The command-line flag of setting `name`."""
    return "--" + name.replace("_", "-")


def unwrap_optional(tp):
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def to_dict(config) -> dict:
    """Plain JSON-able dict (tuples become lists): for config.json and MLflow params."""
    return dataclasses.asdict(config)


def from_dict(cls, values: dict):
    """Rebuild `cls` from a dict saved earlier; unknown keys are ignored (older/newer files)."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kept = {}
    for key, value in values.items():
        if key not in names:
            continue
        tp, _ = unwrap_optional(hints[key])
        kept[key] = tuple(value) if typing.get_origin(tp) is tuple and value is not None else value
    return cls(**kept)
