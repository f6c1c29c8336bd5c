"""Input preprocessing that follows the weights (docs/paper.md, "Input").

Caffe-derived weights (the reference FCNs, pytorch-fcn's `*_from_caffe.pth`) expect BGR,
0-255, the Caffe VGG mean subtracted; torchvision ImageNet weights expect RGB, 0-1, ImageNet
mean/std. A spec is a plain dict so that a checkpoint's config.json can record it:
`{"name", "channel_order", "scale", "mean", "std"}` with `x = (pixel / (255 / scale) - mean) / std`
per channel, in `channel_order`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

CAFFE = {
    "name": "caffe",
    "channel_order": "BGR",
    "scale": 255,
    "mean": [104.00698793, 116.66876762, 122.67891434],
    "std": [1.0, 1.0, 1.0],
}
TORCHVISION = {
    "name": "torchvision",
    "channel_order": "RGB",
    "scale": 1,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
SPECS = {"caffe": CAFFE, "torchvision": TORCHVISION}


def preprocessing_for(name: str, source="torchvision") -> dict:
    """The spec for model `name` whose weights came from `source`.

    `source`: "torchvision" (ImageNet backbone or training from scratch: any fixed
    normalization works there, so we keep torchvision's), "caffe" / "pytorch-fcn"
    (Caffe-converted weights), a spec name, or a file path (paths naming `from_caffe` are
    Caffe-converted, the pytorch-fcn convention). `False`/`None` (no pretrained weights)
    means torchvision. `name` is accepted for the record; all our models take 3-channel input.
    """
    del name  # every model family uses the same spec for the same weight source
    if source in (None, False, True):
        return copy.deepcopy(TORCHVISION)
    source = str(source)
    if source in ("caffe", "pytorch-fcn") or "from_caffe" in source:
        return copy.deepcopy(CAFFE)
    if source == "torchvision" or "/" in source or source.endswith((".pth", ".pt")):
        return copy.deepcopy(TORCHVISION)  # a torchvision-format state_dict file
    raise ValueError(f"unknown weight source {source!r}: use 'torchvision', 'caffe' or a path")


def _spec(spec) -> dict:
    if isinstance(spec, str):
        if spec not in SPECS:
            raise ValueError(f"unknown preprocessing {spec!r}; known: {sorted(SPECS)}")
        return SPECS[spec]
    return spec


def normalize(image, spec, channels_last: bool = False) -> torch.Tensor:
    """uint8 RGB `H x W x 3` (or a batch `N x H x W x 3`), NumPy or torch -> float32 NCHW-ready.

    Returns `3 x H x W` for one image, `N x 3 x H x W` for a batch: contiguous, or with
    `channels_last` a batch in PyTorch's channels-last layout, which is the pixels' own
    (H x W x 3) order, so no copy rearranges them (the inference path's layout).
    """
    import torch  # here, not above: the specs are read by drivers that never load a model

    spec = _spec(spec)
    array = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(f"expected H x W x 3 or N x H x W x 3 RGB, got shape {tuple(array.shape)}")
    x = array.to(torch.float32, copy=True)  # a copy of its own: the steps below are in place
    if spec["channel_order"] == "BGR":
        x = x.flip(-1)
    elif spec["channel_order"] != "RGB":
        raise ValueError(f"unknown channel_order {spec['channel_order']!r}")
    # In place, each step the same arithmetic as `(x * scale - mean) / std`, bit for bit.
    x.mul_(spec["scale"] / 255.0)
    x.sub_(torch.tensor(spec["mean"], dtype=torch.float32))
    x.div_(torch.tensor(spec["std"], dtype=torch.float32))
    x = x.movedim(-1, -3)
    return x if channels_last and x.ndim == 4 else x.contiguous()
