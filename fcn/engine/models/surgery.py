"""Network surgery, as fcn.berkeleyvision.org `surgery.py`: small functions, one operation each.

- `convolutionalize`: a classifier's Linear layer -> the equivalent convolution;
- `copy_vgg16` / `copy_alexnet` / `copy_googlenet`: a torchvision ImageNet net -> FCN backbone;
- `load_pretrained_backbone`: those weights from the local torch hub cache or a given file
  (never downloaded, never silently replaced by random weights);
- `transplant`, `fcn16s_from_fcn32s`, `fcn8s_from_fcn16s`: staged training (docs/paper.md);
- `infer_model_name`, `vgg_width` and `load_exactly` serve the weight-file readers
  (fcn/engine/weights/: pytorch-fcn checkpoints and .caffemodel files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from fcn.engine.models import vgg
from fcn.engine.models.alexnet import FCNAlexNet
from fcn.engine.models.googlenet import BACKBONE as GOOGLENET_BACKBONE
from fcn.engine.models.googlenet import FCNGoogLeNet

if TYPE_CHECKING:
    import torchvision

# The torchvision weights each FCN family starts from (their file names come from these), by
# name: importing torchvision costs ~2 s of CPU (it pulls in torch._dynamo), paid by every
# training worker and driver that imports this module and never needs them (docs/environment.md).
TORCHVISION_WEIGHTS = {
    "vgg16": "VGG16_Weights",
    "alexnet": "AlexNet_Weights",
    "googlenet": "GoogLeNet_Weights",
}


def _weights_url(arch: str) -> str:
    import torchvision

    return getattr(torchvision.models, TORCHVISION_WEIGHTS[arch]).IMAGENET1K_V1.url


def convolutionalize(linear: nn.Linear, conv: nn.Conv2d) -> None:
    """Copy `linear` into `conv` so that conv over a k x k window computes linear on it.

    The Linear input is a flattened C x k x k map (PyTorch flattens channel-major), so its
    `[out, C*k*k]` weight is exactly the conv's `[out, C, k, k]` weight, reshaped.
    """
    if linear.weight.numel() != conv.weight.numel():
        raise ValueError(
            f"cannot convolutionalize Linear {tuple(linear.weight.shape)} into conv "
            f"{tuple(conv.weight.shape)}"
        )
    with torch.no_grad():
        conv.weight.copy_(linear.weight.reshape(conv.weight.shape))
        conv.bias.copy_(linear.bias)


def _copy_convs(sources, targets) -> None:
    sources, targets = list(sources), list(targets)
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} source convolutions for {len(targets)} targets")
    for source, target in zip(sources, targets, strict=True):
        if source.weight.shape != target.weight.shape:
            raise ValueError(f"conv shapes {source.weight.shape} != {target.weight.shape}")
        with torch.no_grad():
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)


def copy_vgg16(fcn: vgg.FCNVGG16, net: torchvision.models.VGG) -> None:
    """torchvision VGG16 features -> conv1_1..conv5_3; classifier[0], [3] -> fc6, fc7."""
    names = [
        f"conv{block}_{i}" for block, convs, _ in vgg.VGG16_BLOCKS for i in range(1, convs + 1)
    ]
    _copy_convs(
        (m for m in net.features if isinstance(m, nn.Conv2d)), (getattr(fcn, n) for n in names)
    )
    convolutionalize(net.classifier[0], fcn.fc6)
    convolutionalize(net.classifier[3], fcn.fc7)


def copy_alexnet(fcn: FCNAlexNet, net: torchvision.models.AlexNet) -> None:
    """torchvision AlexNet features -> conv1..conv5; classifier[1], [4] -> fc6, fc7."""
    _copy_convs(
        (m for m in net.features if isinstance(m, nn.Conv2d)),
        (fcn.conv1, fcn.conv2, fcn.conv3, fcn.conv4, fcn.conv5),
    )
    convolutionalize(net.classifier[1], fcn.fc6)
    convolutionalize(net.classifier[4], fcn.fc7)


def copy_googlenet(fcn: FCNGoogLeNet, net: torchvision.models.GoogLeNet) -> None:
    """torchvision GoogLeNet stem and inceptions -> the same-named FCN modules (BN included)."""
    for name in GOOGLENET_BACKBONE:
        getattr(fcn, name).load_state_dict(getattr(net, name).state_dict())


def torchvision_weights_file(arch: str) -> str:
    """The file name torchvision's hub cache uses for `arch` (e.g. 'vgg16-397923af.pth')."""
    if arch not in TORCHVISION_WEIGHTS:
        raise ValueError(f"unknown backbone {arch!r}; known: {sorted(TORCHVISION_WEIGHTS)}")
    return os.path.basename(_weights_url(arch))


def find_backbone_weights(arch: str, path=None) -> Path:
    """`path` if given, else `<torch.hub.get_dir()>/checkpoints/<torchvision file name>`.

    Raises FileNotFoundError naming the file and the directory: nothing is downloaded here.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"backbone weights file {str(path)!r} does not exist")
        return path
    file_name = torchvision_weights_file(arch)
    directory = Path(torch.hub.get_dir()) / "checkpoints"
    path = directory / file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained=True needs torchvision's ImageNet {arch} weights, file {file_name!r} "
            f"in {str(directory)!r} (the torch hub cache; set TORCH_HOME to move it), and it is "
            f"not there. Nothing is downloaded here: copy the file there (from "
            f"{_weights_url(arch)}) or pass its path as pretrained='/path/{file_name}'."
        )
    return path


def _torchvision_net(arch: str) -> nn.Module:
    import torchvision

    if arch == "vgg16":
        return torchvision.models.vgg16(weights=None)
    if arch == "alexnet":
        return torchvision.models.alexnet(weights=None)
    # aux_logits=True: torchvision's GoogLeNet file holds the auxiliary heads too.
    return torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)


def load_backbone_state_dict(arch: str, path=None) -> dict:
    file = find_backbone_weights(arch, path)
    state = torch.load(file, map_location="cpu", weights_only=True)
    return state.get("model_state_dict", state) if isinstance(state, dict) else state


def load_pretrained_backbone(fcn: nn.Module, arch: str, path=None) -> None:
    """Fill `fcn`'s backbone with ImageNet weights of torchvision's `arch` (file: see above).

    The file must be a state_dict of torchvision's `arch` (e.g. pytorch-fcn's
    `vgg16_from_caffe.pth` is one); it loads with strict=True, so a wrong file fails loudly.
    """
    net = _torchvision_net(arch)
    net.load_state_dict(load_backbone_state_dict(arch, path), strict=True)
    copy = {"vgg16": copy_vgg16, "alexnet": copy_alexnet, "googlenet": copy_googlenet}[arch]
    copy(fcn, net)


def transplant(source: nn.Module, target: nn.Module) -> list[str]:
    """Copy every parameter/buffer of `target` that `source` has under the same name.

    The rest of `target` keeps its initialization: the new skip score layers are zero and the
    new upsamplings bilinear, so at first the target computes what the source computed (up to
    the border taper of the transposed convolutions). Returns the copied names.
    """
    source_state = source.state_dict()
    copied = []
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            if name not in source_state:
                continue
            if source_state[name].shape != tensor.shape:
                raise ValueError(
                    f"{name}: source {tuple(source_state[name].shape)} vs target "
                    f"{tuple(tensor.shape)} (different num_classes or width?)"
                )
            tensor.copy_(source_state[name])
            copied.append(name)
    return copied


def fcn16s_from_fcn32s(fcn32s: vgg.FCNVGG16, learnable_upsampling: bool = False):
    """A new FCN-16s starting from a trained FCN-32s (docs/paper.md: staged training)."""
    target = vgg.fcn16s(fcn32s.num_classes, learnable_upsampling, fcn32s.width)
    transplant(fcn32s, target)
    return target


def fcn8s_from_fcn16s(fcn16s: vgg.FCNVGG16, learnable_upsampling: bool = False):
    """A new FCN-8s starting from a trained FCN-16s."""
    target = vgg.fcn8s(fcn16s.num_classes, learnable_upsampling, fcn16s.width)
    transplant(fcn16s, target)
    return target


# Caffe's FCN-8s at-once scales pool4 and pool3 with fixed `Scale` layers of these names; they
# are saved in its .caffemodel (our net applies the same constants without parameters).
AT_ONCE_SCALE_LAYERS = tuple(f"scale_{skip.pool}" for skip in vgg.SKIPS)


def infer_model_name(layer_names, hint: str = "", scales_recorded: bool = False) -> str:
    """The FCN whose layers these are: state_dict keys or Caffe layer names.

    FCN-8s and FCN-8s at-once have the same parameters, and at-once weights in an FCN-8s score
    pool4 100x and pool3 10,000x too strongly. A Caffe at-once file holds its fixed
    `scale_pool4`/`scale_pool3` layers (`scales_recorded`: their absence means FCN-8s); a
    state_dict holds nothing that tells the two apart, so the name must come from `hint`
    (pytorch-fcn's 'arch' entry or file name: 'FCN8sAtOnce', 'fcn8s-atonce_from_caffe.pth',
    'fcn8s_from_caffe.pth'), else this refuses.
    """
    layers = {name.split(".")[0] for name in layer_names}
    if "score_fr" not in layers:
        raise ValueError("not an FCN: no 'score_fr' layer")
    if "upscore" in layers:
        if "inception5b" in layers:
            return "fcn-googlenet"
        return "fcn-alexnet" if "conv1" in layers else "fcn32s"
    if "upscore16" in layers:
        return "fcn16s"
    if "upscore8" not in layers:
        raise ValueError("not an FCN: none of the layers upscore, upscore16, upscore8")
    if layers & set(AT_ONCE_SCALE_LAYERS):
        return "fcn8s-atonce"
    if scales_recorded:
        return "fcn8s"
    named = hint.lower().replace("-", "").replace("_", "")
    if "atonce" in named:
        return "fcn8s-atonce"
    if "fcn8s" in named:
        return "fcn8s"
    raise ValueError(
        "FCN-8s and FCN-8s at-once weights have the same layers and nothing names which these "
        "are: give the model name (fcn8s or fcn8s-atonce)"
    )


def _listed(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - 8} more" if len(names) > 8 else ""
    return ", ".join(names[:8]) + more if names else "none"


def _squeezed(shape) -> tuple:
    """The shape without leading 1s: Caffe's legacy 4-D blobs store a bias as 1x1x1xC."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def load_exactly(model: nn.Module, state: dict, net: str) -> None:
    """`model.load_state_dict(state, strict=True)`, failing with one line that names the
    layers only in the weights, only in the net (`net` describes it), or of another shape."""
    expected = model.state_dict()
    extra = {key.rsplit(".", 1)[0] for key in state.keys() - expected.keys()}
    missing = {key.rsplit(".", 1)[0] for key in expected.keys() - state.keys()}
    if extra or missing:
        raise ValueError(
            f"the weights do not fit {net}: layers in the weights, not in the net: "
            f"{_listed(extra)}; in the net, not in the weights: {_listed(missing)}"
        )
    for key, tensor in state.items():
        if _squeezed(tensor.shape) != _squeezed(expected[key].shape):
            raise ValueError(
                f"the weights do not fit {net}: {key} is {tuple(tensor.shape)} in the weights, "
                f"{tuple(expected[key].shape)} in the net"
            )
    model.load_state_dict(
        {key: tensor.reshape(expected[key].shape) for key, tensor in state.items()}, strict=True
    )


def model_name(model: nn.Module) -> str:
    """The `build_model` name of `model` (the inverse of build_model)."""
    if isinstance(model, FCNAlexNet):
        return "fcn-alexnet"
    if isinstance(model, FCNGoogLeNet):
        return "fcn-googlenet"
    if model.at_once:
        return "fcn8s-atonce"
    return ("fcn32s", "fcn16s", "fcn8s")[len(model.skips)]


def vgg_width(fc6_channels: int) -> float | None:
    """The `width` option of an FCN-VGG16 whose fc6 has `fc6_channels` outputs (None: 1)."""
    width = fc6_channels / 4096
    return None if width == 1 else width
