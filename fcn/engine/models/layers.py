"""The FCN building blocks shared by every backbone: bilinear kernels, upsampling, cropping.

Follows fcn.berkeleyvision.org `surgery.py` (`upsample_filt`, `interp`) and the Caffe `Crop`
layer, so the numbers match the reference models.
"""

import torch
from torch import nn


def bilinear_kernel(in_channels: int, out_channels: int, kernel_size: int) -> torch.Tensor:
    """Weight `[in, out, k, k]` for a ConvTranspose2d that upsamples by bilinear interpolation.

    factor f = (k + 1) // 2; center = f - 1 for odd k, f - 0.5 for even k; the 2-D filter
    (1 - |i - c| / f)(1 - |j - c| / f) sits only on the diagonal (class c -> class c), so each
    class is interpolated on its own and classes never mix.
    """
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    # float64 then cast: the reference builds the filter in numpy double precision.
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    filt = torch.outer(filt1d, filt1d)
    weight = torch.zeros(in_channels, out_channels, kernel_size, kernel_size, dtype=torch.float64)
    diag = torch.arange(min(in_channels, out_channels))
    weight[diag, diag] = filt
    return weight.float()


def upsample(
    channels: int, kernel_size: int, stride: int, learnable: bool = False
) -> nn.ConvTranspose2d:
    """Bias-free transposed convolution initialized to bilinear interpolation.

    The reference models keep it fixed (Caffe `lr_mult: 0`): `learnable=False` sets
    `requires_grad=False`; the weight stays in `state_dict()` either way, so checkpoints of
    both kinds have the same keys.
    """
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=stride, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, channels, kernel_size))
    layer.weight.requires_grad_(learnable)
    return layer


def crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    """`x[..., offset:offset + height, offset:offset + width]`, as Caffe's Crop layer.

    Raises instead of returning a short tensor: a too-small map means the geometry is wrong.
    """
    if x.shape[-2] < offset + height or x.shape[-1] < offset + width:
        raise ValueError(
            f"cannot crop {height}x{width} at offset {offset} from a "
            f"{x.shape[-2]}x{x.shape[-1]} map"
        )
    return x[..., offset : offset + height, offset : offset + width]


def upscore_offset(kernel_size: int, crop_offset: int) -> float:
    """Image position of coarse cell 0 when a bilinear `upsample` of `kernel_size` is followed by
    `crop(crop_offset)`: the kernel's center (k - 1) / 2 lands on output index stride * a +
    (k - 1) / 2, which the crop moves to image position stride * a + (k - 1) / 2 - crop."""
    return (kernel_size - 1) / 2 - crop_offset
