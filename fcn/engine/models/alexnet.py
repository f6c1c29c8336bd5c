"""FCN-AlexNet on torchvision's AlexNet, following the reference `voc-fcn-alexnet` Caffe net.

conv1 (pad 100) ... pool5, fc6 as a 6x6 convolution and fc7 as 1x1 (the ImageNet fc8 dropped),
`score_fr` (zero-initialized) and `upscore` (bilinear, k63 s32, fixed by default), crop 18.
Module names are the Caffe ones; `fcn.models.surgery.copy_alexnet` fills them from a
torchvision `AlexNet`.

Where torchvision's AlexNet differs from Caffe's (bvlc_alexnet), and what that changes:
- Channels 64/192/384/256/256 (the one-GPU "One weird trick" variant) instead of 96/256/384/
  384/256, and no grouping in conv2/4/5 (Caffe splits them in 2 groups). The convolutions hold
  2.47M parameters instead of 2.33M; with fc6/fc7 (54.5M, identical in both) the FCN has 57.0M
  parameters either way, so the paper's 57M still holds.
- No LRN after conv1/conv2 (Caffe has norm1/norm2). LRN has no parameters; it only rescales
  activations, which the ImageNet training of each variant absorbed.
- Pools: torchvision uses floor mode; we set ceil mode as Caffe, which changes only how many
  border cells exist (no weights), so every input size gives a covering score map.
- conv1 pads 2 in torchvision, 0 in Caffe's AlexNet; the FCN pads 100 in both cases.
Geometry (same for both): score cell o sits at image position 32 o + 13 and the k63 upscore puts
it at 32 o + 31, hence the crop of 18 and exact alignment.
"""

import torch
from torch import nn

from fcn.engine.models.layers import crop, upsample, upscore_offset

UPSCORE_CROP = 18


class FCNAlexNet(nn.Module):
    def __init__(self, num_classes: int = 21, learnable_upsampling: bool = False):
        super().__init__()
        self.num_classes = num_classes
        # The shapes of torchvision's AlexNet features, pad 100 on conv1, Caffe's ceil pools.
        self.conv1 = nn.Conv2d(3, 64, 11, stride=4, padding=100)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.relu4 = nn.ReLU(inplace=True)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        self.relu5 = nn.ReLU(inplace=True)
        self.pool5 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.fc6 = nn.Conv2d(256, 4096, 6)  # the 6x6 pool5 window fc6 saw in AlexNet
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)

        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        nn.init.zeros_(self.score_fr.weight)  # docs/paper.md: new score layers start at zero
        nn.init.zeros_(self.score_fr.bias)
        self.upscore = upsample(num_classes, 63, 32, learnable_upsampling)

    coarse_stride = 32
    context = 208  # receptive-field radius of an output pixel (fcn.engine.tiles)
    coarse_offset = upscore_offset(63, UPSCORE_CROP)  # 13.0

    def coarse_score(self, x: torch.Tensor) -> torch.Tensor:
        """score_fr: the 32-stride scores before `upscore`."""
        h = self.pool1(self.relu1(self.conv1(x)))
        h = self.pool2(self.relu2(self.conv2(h)))
        h = self.relu3(self.conv3(h))
        h = self.relu4(self.conv4(h))
        h = self.pool5(self.relu5(self.conv5(h)))
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        return self.score_fr(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.upscore(self.coarse_score(x))
        return crop(h, UPSCORE_CROP, x.shape[-2], x.shape[-1]).contiguous()


def fcn_alexnet(num_classes: int = 21, learnable_upsampling: bool = False) -> FCNAlexNet:
    return FCNAlexNet(num_classes, learnable_upsampling=learnable_upsampling)
