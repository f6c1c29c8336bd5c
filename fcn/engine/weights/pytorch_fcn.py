"""wkentaro/pytorch-fcn weight files -> our nets (docs/paper-weights.md).

Its training checkpoints (`{'model_state_dict': ..., 'arch': 'FCN8s', ...}`) and bare
state_dicts (the `*_from_caffe.pth` files) use the Caffe layer names our nets keep, so they load
with strict=True once the model, classes and width are read from the keys.
"""

from __future__ import annotations

import os

import torch

from fcn.engine.models import build_model, preprocess, surgery

# pytorch-fcn class names (the 'arch' entry of its training checkpoints) -> our names.
PYTORCH_FCN_ARCH = {
    "FCN32s": "fcn32s",
    "FCN16s": "fcn16s",
    "FCN8s": "fcn8s",
    "FCN8sAtOnce": "fcn8s-atonce",
}


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
