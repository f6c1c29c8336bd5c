"""The command line generated from a settings dataclass: one flag per field, its help text from
the field (`metadata["help"]`, `choices`, `group`), `--help` grouped and ending with examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from fcn.config.fields import flag, unwrap_optional


class _ExtendReplacingDefault(argparse.Action):
    """`--split a=x b=y` and `--split a=x --split b=y` both give (a=x, b=y); a given flag
    replaces the default instead of adding to it (argparse's "extend" would add)."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest)
        kept = [] if current is self.default or current is None else list(current)
        setattr(namespace, self.dest, kept + list(values))


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the job docstring's layout; appends each default unless it is None or the
    help text already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: %(default)s)"


# Each flag's --help group, by field name (one vocabulary across the jobs); a field's
# `metadata["group"]` overrides it, and a name in none of them stays under "options".
GROUPS = {
    "data": (
        "data", "input", "output", "input_format", "voc", "sbd", "unlabeled", "split",
        "classes", "voc_splits", "train_split", "val_split", "limit", "val_limit", "crop_size",
        "flip", "cache_reads", "loader", "rows_per_shard", "rows_per_row_group", "max_pixels",
        "allow_empty", "max_images", "force", "retry_errors", "resegment_older_models", "source",
    ),
    "model": (
        "model", "init", "num_classes", "width", "learnable_upsampling", "classifier_only",
        "scales", "shift_and_stitch", "max_bytes",
    ),
    "optimisation": (
        "iterations", "eval_every", "optimizer", "lr", "momentum", "weight_decay", "loss",
        "score_lr_mult", "class_weights", "loss_sample", "seed",
    ),
    "cluster": (
        "workers", "gpu", "cpus_per_worker", "threads", "amp", "channels_last", "max_failures",
        "concurrency", "read_threads", "cpus_per_actor", "gpus_per_actor", "io_concurrency",
        "max_batch_pixels",
    ),
    "tracking": (
        "storage", "name", "experiment", "registered_model", "val_images_logged",
        "tracking_uri", "log_artifacts", "champion", "promote", "top",
    ),
}  # fmt: skip
_GROUP_OF = {name: group for group, names in GROUPS.items() for name in names}


def _group(parser, groups: dict, f: dataclasses.Field):
    """The argument group `f`'s flag goes in (created in GROUPS' order on first use)."""
    name = f.metadata.get("group") or _GROUP_OF.get(f.name)
    if name is None:
        return parser
    if name not in groups:
        groups[name] = parser.add_argument_group(name)
    return groups[name]


def build_parser(
    cls, description: str | None = None, epilog: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description or (cls.__doc__ or "").strip(),
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    groups: dict = {}
    for f in dataclasses.fields(cls):
        tp, optional = unwrap_optional(hints[f.name])
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
            kwargs["action"] = _ExtendReplacingDefault
            kwargs["nargs"] = "+"
        elif origin is typing.Literal:
            kwargs["choices"] = typing.get_args(tp)
            kwargs["type"] = type(typing.get_args(tp)[0])
        else:
            kwargs["type"] = tp
        if optional and "default" not in kwargs and not kwargs.get("required"):
            kwargs["default"] = None
        if f.metadata.get("positional"):  # `jobs/explain.py MASK`: the one thing it takes
            kwargs.pop("dest")
            kwargs.pop("required", None)
            parser.add_argument(f.name, metavar=f.name.upper(), **kwargs)
            continue
        _group(parser, groups, f).add_argument(flag(f.name), **kwargs)
    return parser


def parse(cls, argv: list[str] | None = None, description: str | None = None, epilog=None):
    """Parse `argv` (default: sys.argv[1:]) into a `cls` instance; `epilog`: examples shown
    after the flags in --help."""
    values = vars(build_parser(cls, description, epilog).parse_args(argv))
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        tp, _ = unwrap_optional(hints[name])
        if typing.get_origin(tp) is tuple and isinstance(value, list):
            values[name] = tuple(value)
    return cls(**values)
