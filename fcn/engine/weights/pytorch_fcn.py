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

from fcn.engine.models import build_model, preprocess, surgery

SUFFIXES = (".pth", ".pt", ".pth.tar")
FORMAT = "pytorch-fcn"  # the weights format name checkpoints and version tags record


# pytorch-fcn class names (the 'arch' entry of its training checkpoints) -> our names.
PYTORCH_FCN_ARCH = {
    "FCN32s": "fcn32s",
    "FCN16s": "fcn16s",
    "FCN8s": "fcn8s",
    "FCN8sAtOnce": "fcn8s-atonce",
}


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
    """The FCN of a pytorch-fcn file's bytes (see `import_pytorch_fcn`; `file_name` can
    name the model). A file torch cannot read
    as plain weights is `UnreadableWeights` (one line); one that is no FCN, ValueError."""
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's own message advises weights_only=False
        raise UnreadableWeights(f"not a plain state_dict file ({type(err).__name__})") from None
    return import_pytorch_fcn(state, name, file_name=os.path.basename(file_name))[0]


def import_pytorch_fcn(checkpoint, name: str | None = None, file_name: str = "", **options):
    """Load a pytorch-fcn checkpoint -> `(model, preprocessing)`.

    `checkpoint`: a path to its training checkpoint (`{'model_state_dict': ..., 'arch': ...}`),
    a bare state_dict file (e.g. `fcn8s-atonce_from_caffe.pth`), or such a dict (`file_name`:
    the name of the file it came from). The model name, num_classes and width are read from
    the keys, the 'arch' entry and the file name (`infer_model_name`) unless `name` is given.
    pytorch-fcn feeds its models Caffe-style input (BGR, 0-255, mean subtracted), so the
    preprocessing returned is "caffe" for all of them.
    """
    hint = file_name
    state = checkpoint
    if isinstance(checkpoint, str | os.PathLike):
        hint = os.path.basename(os.fspath(checkpoint))
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"expected a state_dict or {{'model_state_dict': ...}}, got {type(state)}")
    if "model_state_dict" in state:
        hint = state.get("arch", "") or hint
        if name is None and hint in PYTORCH_FCN_ARCH:
            name = PYTORCH_FCN_ARCH[hint]
        state = state["model_state_dict"]
    # Checkpoints saved from nn.DataParallel / DDP prefix every key with "module.".
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "score_fr.weight" not in state:
        raise ValueError("not an FCN state_dict: no 'score_fr.weight'")
    name = name or surgery.infer_model_name(state, hint)
    if "conv1_1.weight" in state and "fc6.weight" in state:  # FCN-VGG16: any width
        options.setdefault("width", surgery.vgg_width(state["fc6.weight"].shape[0]))
    model = build_model(name, num_classes=state["score_fr.weight"].shape[0], **options)
    surgery.load_exactly(model, state, f"{name} ({model.num_classes} classes)")
    return model, preprocess.preprocessing_for(name, "pytorch-fcn")
