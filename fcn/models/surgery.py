"""Network surgery, as fcn.berkeleyvision.org `surgery.py`: small functions, one operation each.

- `convolutionalize`: a classifier's Linear layer -> the equivalent convolution;
- `copy_vgg16` / `copy_alexnet` / `copy_googlenet`: a torchvision ImageNet net -> FCN backbone;
- `load_pretrained_backbone`: those weights from the local torch hub cache or a given file
  (never downloaded, never silently replaced by random weights);
- `transplant`, `fcn16s_from_fcn32s`, `fcn8s_from_fcn16s`: staged training (PAPER.md);
- `import_pytorch_fcn`: wkentaro/pytorch-fcn checkpoints, Caffe-converted ones included.
"""

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from fcn.models import preprocess, vgg
from fcn.models.alexnet import FCNAlexNet
from fcn.models.googlenet import BACKBONE as GOOGLENET_BACKBONE
from fcn.models.googlenet import FCNGoogLeNet

# The torchvision weights each FCN family starts from (their file names come from these).
TORCHVISION_WEIGHTS = {
    "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "googlenet": torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1,
}


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
    return os.path.basename(TORCHVISION_WEIGHTS[arch].url)


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
            f"{TORCHVISION_WEIGHTS[arch].url}) or pass its path as pretrained='/path/{file_name}'."
        )
    return path


def _torchvision_net(arch: str) -> nn.Module:
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
    """A new FCN-16s starting from a trained FCN-32s (PAPER.md: staged training)."""
    target = vgg.fcn16s(fcn32s.num_classes, learnable_upsampling, fcn32s.width)
    transplant(fcn32s, target)
    return target


def fcn8s_from_fcn16s(fcn16s: vgg.FCNVGG16, learnable_upsampling: bool = False):
    """A new FCN-8s starting from a trained FCN-16s."""
    target = vgg.fcn8s(fcn16s.num_classes, learnable_upsampling, fcn16s.width)
    transplant(fcn16s, target)
    return target


# pytorch-fcn class names (the 'arch' entry of its training checkpoints) -> our names.
PYTORCH_FCN_ARCH = {
    "FCN32s": "fcn32s",
    "FCN16s": "fcn16s",
    "FCN8s": "fcn8s",
    "FCN8sAtOnce": "fcn8s-atonce",
}


def _infer_vgg_name(state: dict, hint: str) -> str:
    if "upscore" in {k.split(".")[0] for k in state}:
        return "fcn32s"
    if "upscore16.weight" in state:
        return "fcn16s"
    if "upscore8.weight" in state:
        # FCN-8s and at-once have the same layers; only the name tells them apart.
        at_once = "atonce" in hint.lower().replace("-", "").replace("_", "")
        return "fcn8s-atonce" if at_once else "fcn8s"
    raise ValueError("not a pytorch-fcn FCN-VGG16 state_dict: no upscore/upscore16/upscore8")


def import_pytorch_fcn(checkpoint, name: str | None = None, **options):
    """Load a pytorch-fcn checkpoint -> `(model, preprocessing)`.

    `checkpoint`: a path to its training checkpoint (`{'model_state_dict': ..., 'arch': ...}`),
    a bare state_dict file (e.g. `fcn8s-atonce_from_caffe.pth`), or such a dict. The model name
    and num_classes are read from the keys, the 'arch' entry and the file name, unless `name` is
    given. pytorch-fcn feeds its models Caffe-style input (BGR, 0-255, mean subtracted), so the
    preprocessing returned is "caffe" for all of them.
    """
    from fcn.models import build_model  # here, not at import: fcn.models imports this module

    hint = ""
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
    name = name or _infer_vgg_name(state, hint)
    model = build_model(name, num_classes=state["score_fr.weight"].shape[0], **options)
    model.load_state_dict(state, strict=True)
    spec = preprocess.preprocessing_for(name, "pytorch-fcn")
    model.preprocessing = spec
    return model, spec
