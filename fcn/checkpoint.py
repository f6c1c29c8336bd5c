"""The checkpoint contract: a directory (any URI) holding `model.pt` and `config.json`.

`model.pt` is a plain state_dict and is always loaded with `weights_only=True`: a checkpoint
may come from a bucket anyone can write to, and unpickling it could run arbitrary code.
`config.json` holds at least `model`, `num_classes`, `preprocessing` and the settings that
trained it, so a checkpoint can be used with nothing else at hand.
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


def load_config(uri: str) -> dict:
    config_uri = storage.join(uri, CONFIG_FILE)
    if not storage.exists(config_uri):
        raise FileNotFoundError(
            f"{uri!r} is not a checkpoint: no {CONFIG_FILE} there (a checkpoint directory holds "
            f"{MODEL_FILE} and {CONFIG_FILE})"
        )
    return json.loads(storage.read_text(config_uri))


def load(uri: str, map_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state_dict, config) of the checkpoint at `uri`."""
    config = load_config(uri)
    data = storage.read_bytes(storage.join(uri, MODEL_FILE))
    state_dict = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    return state_dict, config
