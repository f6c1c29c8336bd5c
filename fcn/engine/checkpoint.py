"""The checkpoint contract: a directory (any URI) holding `model.pt` and `config.json`.

`model.pt` is a plain state_dict and is always loaded with `weights_only=True`: a checkpoint
may come from a bucket anyone can write to, and unpickling it could run arbitrary code.
`config.json` holds at least `model`, `num_classes`, `preprocessing` and the settings that
trained it, so a checkpoint can be used with nothing else at hand. `validate` checks the whole
contract once, in a job's driver, so a bad checkpoint fails there with one line instead of in
every Ray actor.

Checkpoints made elsewhere (imported weights, hand-written configs) declare their input with
`"preprocessing": "caffe"` (BGR, 0-255, the Caffe VGG mean subtracted: the reference FCNs and
pytorch-fcn's files) or `"torchvision"` (RGB, 0-1, ImageNet mean/std), or the full spec dict
of `fcn.models.preprocess`; `resolve_preprocessing` turns either form into the dict.
"""

from __future__ import annotations

import functools
import io
import json

import torch

from fcn import storage

MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"
REQUIRED_KEYS = ("model", "num_classes")
SPEC_KEYS = ("channel_order", "scale", "mean", "std")


class ContractError(ValueError):
    """A checkpoint that breaks the contract; the message is one line naming the field."""


def save(state_dict: dict, config: dict, uri: str, extra: dict[str, object] | None = None):
    """Write a checkpoint to `uri`; `config.json` goes last, so its presence marks it complete.

    `extra`: more files, name -> object saved with torch.save (it must load with
    `weights_only=True`: tensors, containers, numbers), e.g. the optimizer state. Tensors are
    streamed to a file, never built in memory: a VGG16 checkpoint with Adam state is ~1.6 GB,
    and with the workers' allocator settings a transient copy stays resident for good.
    """
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise ValueError(f"checkpoint config lacks {missing}; it needs at least {REQUIRED_KEYS}")
    storage.makedirs(uri)
    files = {**(extra or {}), MODEL_FILE: {k: v.detach().cpu() for k, v in state_dict.items()}}
    for name, obj in files.items():
        storage.write_with(storage.join(uri, name), functools.partial(torch.save, obj))
    storage.write_text(storage.join(uri, CONFIG_FILE), json.dumps(config, indent=2, default=str))


def resolve_preprocessing(value) -> dict:
    """A config's `preprocessing` (a spec name or a spec dict) as the full spec dict."""
    from fcn.engine.models import preprocess

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


def validate(config: dict, uri: str) -> dict:
    """Check the whole contract of a checkpoint's config.json; returns it with `preprocessing`
    resolved to the full spec. Raises ContractError: "checkpoint URI: <field> ... (what to do)"."""
    from fcn.engine.classes import classes_of
    from fcn.engine.models import MODEL_NAMES

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
    try:
        preprocessing = resolve_preprocessing(config["preprocessing"])
    except ContractError as err:
        fail(str(err))
    try:
        classes_of(config)
    except KeyError as err:  # a 'classes' dict without 'names'
        fail(f"'classes' lacks {err}")
    except (ValueError, TypeError) as err:
        fail(f"'classes': {err}")
    return {**config, "preprocessing": preprocessing}


def check(uri: str) -> dict:
    """The validated config.json of the checkpoint at `uri`, without reading the weights
    (their file must be there)."""
    config = validate(load_config(uri), uri)
    if not storage.exists(storage.join(uri, MODEL_FILE)):
        raise ContractError(f"checkpoint {uri}: {MODEL_FILE} is missing beside {CONFIG_FILE}")
    return config


def load_config(uri: str) -> dict:
    config_uri = storage.join(uri, CONFIG_FILE)
    if not storage.exists(config_uri):
        raise FileNotFoundError(
            f"{uri!r} is not a checkpoint: no {CONFIG_FILE} there (a checkpoint directory holds "
            f"{MODEL_FILE} and {CONFIG_FILE})"
        )
    return json.loads(storage.read_text(config_uri))


def load(uri: str, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state_dict, validated config) of the checkpoint at `uri`."""
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
