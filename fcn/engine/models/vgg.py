"""FCN-VGG16: FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once, as the reference Caffe models.

One class: a skip (pool4, then pool3) is one more step of "upsample the coarse score 2x, add the
cropped score of a finer pool". Module names are the Caffe layer names, as flat attributes, so
pytorch-fcn (`torchfcn.models.FCN32s/16s/8s/8sAtOnce`) state_dicts load with `strict=True`.

Geometry (docs/paper.md): `conv1_1` pads by 100 so that any input size yields a score map that
covers the image after upsampling, and the crop offsets put output pixel (i, j) exactly on input
pixel (i, j): score_fr cell o sits at image position 32 o + 12.5 (pools add half a cell each),
the k64 upscore puts it at output index 32 o + 31.5, hence crop 19; likewise 5 / 27 and 9 / 31
for the skips (tests/unit/test_models.py checks it with one-hot inputs).
"""

from dataclasses import dataclass

import torch
from torch import nn

from fcn.engine.models.layers import crop, upsample, upscore_offset

# (block, convolutions, channels) of VGG16 "D".
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))


@dataclass(frozen=True)
class Skip:
    pool: str  # finer feature map fused in, e.g. "pool4"
    channels: int
    crop: int  # offset of score_<pool> against the 2x-upsampled coarser score
    at_once_scale: float  # input scaling of FCN-8s at-once (keeps the new skip from dominating)
    upscore: str  # Caffe name of the 2x upsampling of the coarser score before the sum


POOL4 = Skip("pool4", 512, crop=5, at_once_scale=0.01, upscore="upscore2")
POOL3 = Skip("pool3", 256, crop=9, at_once_scale=0.0001, upscore="upscore_pool4")
SKIPS = (POOL4, POOL3)  # FCN-16s fuses the first, FCN-8s both


@dataclass(frozen=True)
class FinalUpscore:
    name: str
    kernel_size: int
    stride: int
    crop: int


# Indexed by the number of skips: FCN-32s, FCN-16s, FCN-8s.
FINAL_UPSCORE = (
    FinalUpscore("upscore", 64, 32, crop=19),
    FinalUpscore("upscore16", 32, 16, crop=27),
    FinalUpscore("upscore8", 16, 8, crop=31),
)


# Receptive-field radius of an output pixel, by number of skips (measured with the gradient of
# one output pixel; tests/unit/test_tiles.py shows a tile margin one grid step short of it seams).
CONTEXT = (233, 241, 245)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class FCNVGG16(nn.Module):
    """FCN on VGG16 with `num_skips` skips: 0 = FCN-32s, 1 = FCN-16s, 2 = FCN-8s.

    `width` scales every layer's channels (fc6/fc7: 4096 x width). 1 is the paper's network,
    the only width ImageNet weights exist for; 0.25 (1/16 of the FLOPs) is not from the paper:
    it trains from scratch in minutes on a CPU (tests, demo). Layer names and geometry (pad
    100, crops) are the same at every width.

    Input `N x 3 x H x W` (preprocessed for the loaded weights), output logits `N x C x H x W`.
    """

    def __init__(
        self,
        num_classes: int = 21,
        num_skips: int = 0,
        at_once: bool = False,
        learnable_upsampling: bool = False,
        width: float = 1.0,
    ):
        super().__init__()
        if not 0 <= num_skips <= len(SKIPS):
            raise ValueError(f"num_skips must be in 0..{len(SKIPS)}, got {num_skips}")
        self.num_classes = num_classes
        self.skips = SKIPS[:num_skips]
        self.final = FINAL_UPSCORE[num_skips]
        self.at_once = at_once

        self.width = width
        in_channels = 3
        for block, convs, channels in VGG16_BLOCKS:
            channels = _scaled(channels, width)
            for i in range(1, convs + 1):
                # pad 100 on the first conv only: the net sees the image with a 100 px margin.
                padding = 100 if (block, i) == (1, 1) else 1
                conv = nn.Conv2d(in_channels, channels, 3, padding=padding)
                setattr(self, f"conv{block}_{i}", conv)
                setattr(self, f"relu{block}_{i}", nn.ReLU(inplace=True))
                in_channels = channels
            # ceil mode = Caffe pooling; keeps every input pixel under some output cell.
            setattr(self, f"pool{block}", nn.MaxPool2d(2, stride=2, ceil_mode=True))

        # The convolutionalized classifier: fc6 sees the 7x7 pool5 window fc6 saw in VGG16.
        fc = _scaled(4096, width)
        self.fc6 = nn.Conv2d(in_channels, fc, 7)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(0.5)  # Caffe Dropout is elementwise (pytorch-fcn: Dropout2d)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(0.5)

        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        for skip in self.skips:
            channels = _scaled(skip.channels, width)
            setattr(self, f"score_{skip.pool}", nn.Conv2d(channels, num_classes, 1))
            setattr(self, skip.upscore, upsample(num_classes, 4, 2, learnable_upsampling))
        setattr(
            self,
            self.final.name,
            upsample(num_classes, self.final.kernel_size, self.final.stride, learnable_upsampling),
        )
        self._init_weights()

    def _init_weights(self):
        for name, module in self.named_children():
            if not isinstance(module, nn.Conv2d):
                continue  # the ConvTranspose2d layers are already bilinear
            if name.startswith("score"):
                # Zero score layers (docs/paper.md): a new skip adds nothing until it is trained,
                # which is what makes staged 32s -> 16s -> 8s training start where it left off.
                nn.init.zeros_(module.weight)
            elif name in ("fc6", "fc7"):
                nn.init.normal_(module.weight, 0, 0.01)  # torchvision's init of these Linears
            else:
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)

    @property
    def context(self) -> int:
        """Receptive-field radius of an output pixel in input pixels (fcn.engine.tiles)."""
        return CONTEXT[len(self.skips)]

    @property
    def coarse_stride(self) -> int:
        """Stride of `coarse_score` (32, 16 or 8): what the final upsampling undoes."""
        return self.final.stride

    @property
    def coarse_offset(self) -> float:
        """Image position of coarse cell 0 (cell a is at coarse_stride * a + coarse_offset)."""
        return upscore_offset(self.final.kernel_size, self.final.crop)

    def coarse_score(self, x: torch.Tensor) -> torch.Tensor:
        """The scores before the final upsampling (FCN-16s/8s: skips fused)."""
        tapped = {skip.pool for skip in self.skips}
        pools = {}
        h = x
        for block, convs, _ in VGG16_BLOCKS:
            for i in range(1, convs + 1):
                h = getattr(self, f"relu{block}_{i}")(getattr(self, f"conv{block}_{i}")(h))
            h = getattr(self, f"pool{block}")(h)
            if f"pool{block}" in tapped:
                pools[f"pool{block}"] = h
        h = self.drop6(self.relu6(self.fc6(h)))
        h = self.drop7(self.relu7(self.fc7(h)))
        score = self.score_fr(h)
        # The skips as the reference net.py writes them: upsample the coarse score 2x, add the
        # cropped score of the finer pool (crop 5 for pool4, 9 for pool3: docs/paper.md).
        if POOL4 in self.skips:  # FCN-16s, FCN-8s
            upscore2 = self.upscore2(score)
            score_pool4 = self.score_pool4(self._fused_input(pools["pool4"], POOL4))
            score = upscore2 + crop(score_pool4, POOL4.crop, *upscore2.shape[-2:])
        if POOL3 in self.skips:  # FCN-8s
            upscore_pool4 = self.upscore_pool4(score)
            score_pool3 = self.score_pool3(self._fused_input(pools["pool3"], POOL3))
            score = upscore_pool4 + crop(score_pool3, POOL3.crop, *upscore_pool4.shape[-2:])
        return score

    def _fused_input(self, pool: torch.Tensor, skip: Skip) -> torch.Tensor:
        """FCN-8s at-once scales a pool before its score layer (Caffe's fixed Scale layers)."""
        return pool * skip.at_once_scale if self.at_once else pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = getattr(self, self.final.name)(self.coarse_score(x))
        return crop(score, self.final.crop, x.shape[-2], x.shape[-1]).contiguous()


def fcn32s(num_classes: int = 21, learnable_upsampling: bool = False, width: float = 1.0):
    return FCNVGG16(num_classes, 0, learnable_upsampling=learnable_upsampling, width=width)


def fcn16s(num_classes: int = 21, learnable_upsampling: bool = False, width: float = 1.0):
    return FCNVGG16(num_classes, 1, learnable_upsampling=learnable_upsampling, width=width)


def fcn8s(num_classes: int = 21, learnable_upsampling: bool = False, width: float = 1.0):
    return FCNVGG16(num_classes, 2, learnable_upsampling=learnable_upsampling, width=width)


def fcn8s_atonce(num_classes: int = 21, learnable_upsampling: bool = False, width: float = 1.0):
    return FCNVGG16(
        num_classes, 2, at_once=True, learnable_upsampling=learnable_upsampling, width=width
    )
