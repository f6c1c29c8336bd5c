"""FCN models (docs/paper.md): `build_model(name, num_classes, pretrained)`.

Contract (ARCHITECTURE.md): input `N x 3 x H x W` floats normalized as
`preprocessing_for(name, pretrained)` says (a checkpoint records it in its config), output
logits `N x num_classes x H x W` (same H, W, any H, W >= 1); `state_dict()` keys are the Caffe
layer names. Plain PyTorch: no Ray, MLflow or storage imports here.
"""

import importlib

from fcn.engine.models.preprocess import normalize, preprocessing_for

# name -> (module, builder, backbone). The modules (and torch) are imported when a model is
# built, not here: a job's driver checks checkpoints (fcn.engine.checkpoint) without torch.
_BUILDERS = {
    "fcn32s": ("vgg", "fcn32s", "vgg16"),
    "fcn16s": ("vgg", "fcn16s", "vgg16"),
    "fcn8s": ("vgg", "fcn8s", "vgg16"),
    "fcn8s-atonce": ("vgg", "fcn8s_atonce", "vgg16"),
    "fcn-alexnet": ("alexnet", "fcn_alexnet", "alexnet"),
    "fcn-googlenet": ("googlenet", "fcn_googlenet", "googlenet"),
}
# fcn.config lists these names too (TrainConfig's --model choices): --help must not import
# torch to print them; tests/unit/test_opex.py keeps the two lists equal.
MODEL_NAMES = tuple(_BUILDERS)


def backbone_of(name: str) -> str:
    """The ImageNet classifier model `name` builds on: `vgg16`, `alexnet` or `googlenet`."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return _BUILDERS[name][2]


def build_model(name: str, num_classes: int = 21, pretrained=False, **options):
    """Build FCN `name` (one of MODEL_NAMES) scoring `num_classes` classes.

    pretrained: False (random backbone), True (torchvision ImageNet weights from the local
    torch hub cache; a clear FileNotFoundError if absent) or a path to such a state_dict file
    (pytorch-fcn's `vgg16_from_caffe.pth` included). options: `learnable_upsampling=False`,
    `width=1.0` (VGG16 models only: channel multiplier, 1 = the paper's network).
    The input spec its weights expect is `preprocessing_for(name, pretrained)` (record it in
    the checkpoint's config).
    """
    arch = backbone_of(name)  # an unknown name: one clear ValueError
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    module, function, _ = _BUILDERS[name]
    builder = getattr(importlib.import_module(f"fcn.engine.models.{module}"), function)
    width = options.pop("width", None) or 1.0
    if width != 1.0:
        if arch != "vgg16" or width <= 0:
            raise ValueError(f"width must be > 0 and applies to the VGG16 models only, not {name}")
        if pretrained:
            raise ValueError("pretrained weights exist for width 1 only; drop the width option")
        options["width"] = width
    weights = None
    if pretrained:
        from fcn.engine.models import surgery  # torchvision weight enums: loaded only when needed

        # Find the file before building: a missing file fails in milliseconds, not after init.
        weights = surgery.find_backbone_weights(arch, None if pretrained is True else pretrained)
    model = builder(num_classes, **options)
    if weights is not None:
        surgery.load_pretrained_backbone(model, arch, weights)
    return model


__all__ = [
    "MODEL_NAMES",
    "backbone_of",
    "build_model",
    "normalize",
    "preprocessing_for",
]
