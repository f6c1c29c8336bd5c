"""Each job's settings as a frozen dataclass; the command line is generated from the fields.

One source of truth: the same object is parsed from the CLI, passed to the job, logged to
MLflow as params and saved beside each checkpoint, so a result always names what made it.
A field's `metadata["help"]` is its `--help` text; `metadata["choices"]` restricts values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field


def setting(default, help: str, **extra):
    """A dataclass field carrying its CLI help (and optional `choices`)."""
    return field(default=default, metadata={"help": help, **extra})


def required(help: str, **extra):
    return field(metadata={"help": help, "required": True, **extra})


# --- the jobs' settings (each job's owner keeps its own class) -------------------------------


@dataclass(frozen=True)
class IngestConfig:
    """Read VOC / SBD / unlabeled images and write validated Parquet shards."""

    output: str = required("where the Parquet dataset goes (s3://bucket/prefix or a local path)")
    voc: str | None = setting(None, "root of a VOC2011/2012 tree (holds JPEGImages/)")
    sbd: str | None = setting(None, "root of an SBD tree (holds dataset/img and dataset/cls)")
    unlabeled: str | None = setting(None, "prefix of unlabeled images (jpg/png, nested)")


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tune an FCN with Ray Train (data-parallel) on an ingested dataset."""

    data: str = required("root of the ingested Parquet dataset (holds train/ and val/)")
    model: str = setting("fcn32s", "model name", choices=None)
    storage: str = setting("./runs", "where checkpoints go (s3://bucket/prefix or local path)")
    name: str = setting("fcn", "run name; the same name again resumes that run")


@dataclass(frozen=True)
class SegmentConfig:
    """Segment every new image under a prefix and write VOC-palette mask PNGs back."""

    input: str = required("prefix of images (or an ingested Parquet split) to segment")
    output: str = required("prefix where masks and the manifest go")
    model: str = required("checkpoint directory URI, or an MLflow models:/ or runs:/ URI")


# --- CLI generation --------------------------------------------------------------------------


def _unwrap_optional(tp):
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(cls, description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or (cls.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        kwargs: dict = {"help": f.metadata.get("help", ""), "dest": f.name}
        if f.metadata.get("required"):
            kwargs["required"] = True
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default"] = f.default_factory()
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            item = typing.get_args(tp)[0]
            kwargs["type"] = item
            kwargs["nargs"] = "*"
        elif origin is typing.Literal:
            kwargs["choices"] = typing.get_args(tp)
            kwargs["type"] = type(typing.get_args(tp)[0])
        else:
            kwargs["type"] = tp
        if optional and "default" not in kwargs and not kwargs.get("required"):
            kwargs["default"] = None
        parser.add_argument(_flag(f.name), **kwargs)
    return parser


def parse(cls, argv: list[str] | None = None, description: str | None = None):
    """Parse `argv` (default: sys.argv[1:]) into a `cls` instance."""
    namespace = build_parser(cls, description).parse_args(argv)
    values = vars(namespace)
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        tp, _ = _unwrap_optional(hints[name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)


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
        tp, _ = _unwrap_optional(hints[key])
        kept[key] = tuple(value) if typing.get_origin(tp) is tuple and value is not None else value
    return cls(**kept)
