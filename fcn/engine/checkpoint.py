"""The checkpoint contract: a directory (any URI) holding `model.pt` and `config.json`.

`model.pt` is a plain state_dict and is always loaded with `weights_only=True`: a checkpoint
may come from a bucket anyone can write to, and unpickling it could run arbitrary code.
`config.json` holds at least `model`, `num_classes`, `preprocessing` and the settings that
trained it, so a checkpoint can be used with nothing else at hand. `CheckpointConfig.from_dict`
checks the whole contract once, in a job's driver, so a bad checkpoint fails there with one
line instead of in every Ray actor.

Checkpoints made elsewhere (imported weights, hand-written configs) declare their input with
`"preprocessing": "caffe"` (BGR, 0-255, the Caffe VGG mean subtracted: the reference FCNs and
pytorch-fcn's files) or `"torchvision"` (RGB, 0-1, ImageNet mean/std), or the full spec dict
of `fcn.engine.models.preprocess`; `resolve_preprocessing` turns either form into the dict.

In code the file is a `CheckpointConfig`: typed, checked once when read (`from_dict`), and the
one place a checkpoint's model is built from (`build_model`). Nothing is attached to the
`nn.Module`: who needs the input spec or the classes reads them from the config.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fcn import storage
from fcn.engine.classes import ClassList, classes_of
from fcn.engine.models import MODEL_NAMES, build_model, preprocess

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
REQUIRED_KEYS = ("model", "num_classes")
SPEC_KEYS = ("channel_order", "scale", "mean", "std")
# The keys CheckpointConfig types; every other key of config.json (the settings that trained
# the model, an import's source, the iteration) is kept as written in `extra`.
_TYPED_KEYS = ("model", "num_classes", "preprocessing", "width", "classes", "class_names",
               "class_distribution")  # fmt: skip


class ContractError(ValueError):
    """A checkpoint that breaks the contract; the message is one line naming the field."""


@dataclass(frozen=True)
class CheckpointConfig:
    """A checkpoint's config.json, checked (ARCHITECTURE.md, "Contracts").

    `width` is None when the file leaves it out (the paper's network, width 1);
    `class_distribution` is training's count of its masks' classes (the drift reference);
    `extra` holds the file's other keys untouched, so `to_dict` writes back what it read.
    """

    model: str
    num_classes: int
    preprocessing: Mapping  # the full input spec (fcn.engine.models.preprocess)
    classes: ClassList
    width: float | None = None
    class_distribution: Mapping | None = None
    extra: Mapping = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping, uri: str = "config.json") -> CheckpointConfig:
        """Check config.json's contents `raw` (read from `uri`, named in errors): one
        ContractError line saying which field is wrong and what to write instead."""
        _check_fields(raw, uri)
        try:
            spec = resolve_preprocessing(raw["preprocessing"])
        except ContractError as err:
            raise ContractError(f"checkpoint {uri}: {err}") from None
        try:
            classes = classes_of(raw)
        except KeyError as err:  # a 'classes' dict without 'names'
            raise ContractError(f"checkpoint {uri}: 'classes' lacks {err}") from None
        except (ValueError, TypeError) as err:
            raise ContractError(f"checkpoint {uri}: 'classes': {err}") from None
        return cls(
            model=raw["model"], num_classes=raw["num_classes"], preprocessing=spec,
            classes=classes, width=raw.get("width"),
            class_distribution=raw.get("class_distribution"),
            extra={k: v for k, v in raw.items() if k not in _TYPED_KEYS},
        )  # fmt: skip

    def to_dict(self) -> dict:
        """The config.json contents (JSON types only)."""
        typed = {
            "model": self.model,
            "num_classes": self.num_classes,
            "preprocessing": dict(self.preprocessing),
            "classes": self.classes.to_dict(),
        }
        if self.width is not None:
            typed["width"] = self.width
        if self.class_distribution is not None:
            typed["class_distribution"] = dict(self.class_distribution)
        return {**self.extra, **typed}

    def replace(self, **changes) -> CheckpointConfig:
        return dataclasses.replace(self, **changes)

    def build_model(self, **options) -> torch.nn.Module:
        """The untrained model this config describes (load its model.pt into it)."""
        return build_model(self.model, self.num_classes, width=self.width, **options)


def save(
    state_dict: dict,
    config: CheckpointConfig | Mapping,
    uri: str,
    extra: dict[str, object] | None = None,
):
    """Write a checkpoint to `uri`; `config.json` goes last, so its presence marks it complete.

    `config`: what config.json will hold. `extra`: more files, name -> object saved with
    torch.save (it must load with `weights_only=True`: tensors, containers, numbers), e.g. the
    optimizer state. Tensors are streamed to a file, never built in memory: a VGG16 checkpoint
    with Adam state is ~1.6 GB, and with the workers' allocator settings a transient copy stays
    resident for good.
    """
    # A mapping is written as given: checkpoints made by hand (and the contract's own tests,
    # which write broken ones on purpose); readers check it (`load_config`).
    import torch  # here: reading and checking a config.json (a job's driver) needs no torch

    content = config.to_dict() if isinstance(config, CheckpointConfig) else dict(config)
    storage.makedirs(uri)
    files = {**(extra or {}), MODEL_FILE: {k: v.detach().cpu() for k, v in state_dict.items()}}
    for name, obj in files.items():
        storage.write_with(storage.join(uri, name), functools.partial(torch.save, obj))
    storage.write_text(storage.join(uri, CONFIG_FILE), json.dumps(content, indent=2, default=str))


def resolve_preprocessing(value) -> dict:
    """A config's `preprocessing` (a spec name or a spec dict) as the full spec dict."""
    if isinstance(value, str):
        if value not in preprocess.SPECS:
            raise ContractError(
                f"'preprocessing' {value!r} is not a known spec; use one of "
                f"{sorted(preprocess.SPECS)} or a dict with {list(SPEC_KEYS)}"
            )
        return dict(preprocess.SPECS[value])
    if not isinstance(value, dict) or any(k not in value for k in SPEC_KEYS):
        raise ContractError(
            f"'preprocessing' must be 'caffe', 'torchvision' or a dict with {list(SPEC_KEYS)}"
        )
    if value["channel_order"] not in ("RGB", "BGR") or any(
        not isinstance(value[k], list | tuple) or len(value[k]) != 3 for k in ("mean", "std")
    ):
        raise ContractError("'preprocessing' needs channel_order RGB or BGR, 3 mean and 3 std")
    return value


def _check_fields(config: Mapping, uri: str) -> None:
    """The checks of config.json's fields that need no parsing (CheckpointConfig.from_dict)."""

    def fail(message: str):
        raise ContractError(f"checkpoint {uri}: {message}") from None

    for key in REQUIRED_KEYS:
        if key not in config:
            fail(f"config.json lacks '{key}' (the contract: {', '.join(REQUIRED_KEYS)}, "
                 "preprocessing; see ARCHITECTURE.md)")  # fmt: skip
    if "preprocessing" not in config:
        fail("config.json lacks 'preprocessing': declare the input the weights expect, "
             '"preprocessing": "caffe" (Caffe / pytorch-fcn weights) or "torchvision"')  # fmt: skip
    if config["model"] not in MODEL_NAMES:
        fail(f"'model' {config['model']!r} is not one of {', '.join(MODEL_NAMES)}")
    num_classes = config["num_classes"]
    if type(num_classes) is not int or not 1 <= num_classes <= 255:  # bool is an int too
        fail(f"'num_classes' must be an int in 1..255 (255 is void), got {num_classes!r}")
    width = config.get("width")
    if width is not None and (type(width) not in (int, float) or width <= 0):
        fail(f"'width' must be a positive number, got {width!r}")
    distribution = config.get("class_distribution")  # optional: segment's drift reference
    counts = distribution.get("pixel_counts") if isinstance(distribution, dict) else None
    if distribution is not None and (not isinstance(counts, list) or len(counts) != num_classes):
        fail(f"'class_distribution' must hold 'pixel_counts' for {num_classes} classes (and "
             "'image_counts', 'images'), as training writes it; or leave it out")  # fmt: skip
    if "classes" in config and not isinstance(config["classes"], dict):
        fail("'classes' must be a dict with 'names' (and 'colors'), as ClassList.to_dict()")


def check(uri: str) -> CheckpointConfig:
    """The checked config of the checkpoint at `uri`, without reading the weights (their file
    must be there)."""
    config = load_config(uri)
    if not storage.exists(storage.join(uri, MODEL_FILE)):
        raise ContractError(f"checkpoint {uri}: {MODEL_FILE} is missing beside {CONFIG_FILE}")
    return config


def load_config(uri: str) -> CheckpointConfig:
    """The checked config.json of the checkpoint at `uri`."""
    config_uri = storage.join(uri, CONFIG_FILE)
    if not storage.exists(config_uri):
        raise FileNotFoundError(
            f"{uri!r} is not a checkpoint: no {CONFIG_FILE} there (a checkpoint directory holds "
            f"{MODEL_FILE} and {CONFIG_FILE})"
        )
    return CheckpointConfig.from_dict(json.loads(storage.read_text(config_uri)), uri)


def load(uri: str, map_location: str | torch.device = "cpu") -> tuple[dict, CheckpointConfig]:
    """(state_dict, checked config) of the checkpoint at `uri`."""
    import torch

    config = check(uri)
    data = storage.read_bytes(storage.join(uri, MODEL_FILE))
    try:
        state_dict = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's own message advises weights_only=False
        raise ContractError(
            f"checkpoint {uri}: {MODEL_FILE} is not a loadable plain state_dict "
            f"({type(err).__name__}); re-save it with torch.save(model.state_dict(), ...)"
        ) from None
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, torch.Tensor) for v in state_dict.values()
    ):
        raise ContractError(
            f"checkpoint {uri}: {MODEL_FILE} holds a {type(state_dict).__name__}, not a "
            "state_dict (name -> tensor); re-save it with torch.save(model.state_dict(), ...)"
        )
    return state_dict, config
