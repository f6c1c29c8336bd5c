"""FCN-GoogLeNet on torchvision's GoogLeNet (docs/paper.md: to the last inception, average pooling
dropped, 32-stride scoring).

The stem and the inception modules are torchvision's own modules under torchvision's names
(`conv1`, `maxpool1`, ..., `inception5b`), so torchvision ImageNet weights copy over by name;
then `drop` (p 0.4, Caffe's pool5/drop_7x7_s1), `score_fr` (zero-initialized) and a bilinear
`upscore`. conv1 pads 100 as in every FCN.

Where torchvision's GoogLeNet differs from Caffe's bvlc_googlenet, and what that changes:
- Batch-normalized convolutions (ported from TensorFlow), no LRN: better behaved to fine-tune;
  BN in eval mode is a fixed affine map, so the FCN geometry is the same.
- The "5x5" inception branch uses 3x3 kernels (a known torchvision quirk kept for its weights),
  so the backbone holds 5.60M parameters instead of 5.98M (with 5x5 kernels: 0.38M more),
  the ~6M of the paper's Table 1. That, not the FCN head, is why our count is ~6% lower.
- The two auxiliary classifiers are dropped (the FCN never used them), as is the final fc.
- Its ImageNet weights expect torchvision's `transform_input` re-normalization, which we apply
  (`transform_input=True`) so that the usual torchvision preprocessing is right for them.
- Upsampling: the paper does not give the kernel. The score cell o sits at image position
  32 o - 75 (pad 100); a k63 s32 bilinear kernel (center 31) puts it at 32 o + 31, so crop 106
  aligns it exactly, where k64 would be half a pixel off.
"""

import torch
from torch import nn

from fcn.engine.models.layers import crop, upsample, upscore_offset

BACKBONE = (
    "conv1", "maxpool1", "conv2", "conv3", "maxpool2",
    "inception3a", "inception3b", "maxpool3",
    "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
    "inception5a", "inception5b",
)  # fmt: skip
UPSCORE_CROP = 106


class FCNGoogLeNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 21,
        learnable_upsampling: bool = False,
        transform_input: bool = True,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.transform_input = transform_input
        # Imported here: torchvision's import pulls in torch._dynamo (~2 s of CPU), which every
        # Ray worker that unpickles a stage would otherwise pay for one model family.
        import torchvision

        net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True)
        for name in BACKBONE:
            setattr(self, name, getattr(net, name))
        self.conv1.conv.padding = (100, 100)
        self.drop = nn.Dropout(0.4)
        self.score_fr = nn.Conv2d(1024, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)
        nn.init.zeros_(self.score_fr.bias)
        self.upscore = upsample(num_classes, 63, 32, learnable_upsampling)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        # torchvision GoogLeNet: ImageNet mean/std normalized -> the (x - 0.5) / 0.5 its
        # weights were trained on.
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5

    coarse_stride = 32
    context = 220  # receptive-field radius of an output pixel (fcn.engine.tiles)
    coarse_offset = upscore_offset(63, UPSCORE_CROP)  # -75.0

    def coarse_score(self, x: torch.Tensor) -> torch.Tensor:
        """score_fr: the 32-stride scores before `upscore`."""
        h = self._transform_input(x) if self.transform_input else x
        for name in BACKBONE:
            h = getattr(self, name)(h)
        return self.score_fr(self.drop(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.upscore(self.coarse_score(x))
        return crop(h, UPSCORE_CROP, x.shape[-2], x.shape[-1]).contiguous()


def fcn_googlenet(num_classes: int = 21, learnable_upsampling: bool = False) -> FCNGoogLeNet:
    return FCNGoogLeNet(num_classes, learnable_upsampling=learnable_upsampling)
