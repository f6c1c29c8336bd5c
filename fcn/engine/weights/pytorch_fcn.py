"""pytorch-fcn weight files: telling one apart, and reading it without running its code.

pytorch-fcn publishes the authors' nets as `.pth` state_dicts (`fcn8s_from_caffe.pth`) and
saves its training checkpoints as `{'model_state_dict': ..., 'arch': ...}` (`*.pth.tar`). Both
are read with `torch.load(weights_only=True)`: tensors and plain containers, nothing
unpickled that could run. An FCN file differs from an ImageNet backbone file (the other kind
`train --init` takes) by its `score_fr` layer. The one implementation: import_model and
train's --init both ask here.
"""

from __future__ import annotations

import io
import os

import torch

from fcn.engine.models import surgery

SUFFIXES = (".pth", ".pt", ".pth.tar")
FORMAT = "pytorch-fcn"  # the weights format name checkpoints and version tags record


class UnreadableWeights(ValueError):
    """A file torch does not read as plain weights (tensors and containers only)."""


def is_weights_file(uri: str) -> bool:
    """Whether `uri` names a torch weights file (by its suffix; nothing is read)."""
    return uri.rstrip("/").lower().endswith(SUFFIXES)


def is_fcn_state(state) -> bool:
    """Whether a loaded file (`torch.load`'s result) holds an FCN's weights: a state_dict, or
    a pytorch-fcn training checkpoint, with a `score_fr` layer (DDP's `module.` allowed)."""
    state = state.get("model_state_dict", state) if isinstance(state, dict) else {}
    return any(k.removeprefix("module.") == "score_fr.weight" for k in state)


def is_fcn_file(path: str) -> bool:
    """`is_fcn_state` of the local file `path`, memory-mapped (a 540 MB file is not copied
    into memory to read its key names). torch's errors pass through."""
    return is_fcn_state(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


def read_model(data: bytes, name: str | None = None, file_name: str = "") -> torch.nn.Module:
    """The FCN of a pytorch-fcn file's bytes, its `preprocessing` set (see
    `surgery.import_pytorch_fcn`; `file_name` can name the model). A file torch cannot read
    as plain weights is `UnreadableWeights` (one line); one that is no FCN, ValueError."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's own message advises weights_only=False
        raise UnreadableWeights(f"not a plain state_dict file ({type(err).__name__})") from None
    return surgery.import_pytorch_fcn(state, name, file_name=os.path.basename(file_name))[0]
