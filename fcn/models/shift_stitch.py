"""Shift-and-stitch (PAPER.md; Long et al. Section 3.2): dense output from an f-strided net.

Run the net on the input shifted right by dx and down by dy for every (dx, dy) in {0..f-1}^2
and interleave the f^2 coarse outputs: cost f^2 forwards, no learned upsampling. The result
equals the dense output of the same net with the stride-f step made stride 1 and every later
filter dilated ("filter rarefaction"), as the test shows.
"""

import torch
import torch.nn.functional as F


def shift_and_stitch(model, image: torch.Tensor, f: int, margin: int = 0) -> torch.Tensor:
    """Dense `N x C x H x W` output of `model`, a net whose output has stride `f`.

    `model` maps `N x C_in x H' x W'` to `N x C x ~H'/f x ~W'/f`, coarse cell a being input
    position f * a (e.g. an FCN without its final upsampling). The image is zero-padded by
    `margin` (rounded up to a multiple of f) on every side first, the role of FCN's pad 100:
    with a margin at least the net's receptive-field radius, every output pixel is what the
    dilated net computes on the zero-extended image, unaffected by where the shifted frames
    end. margin=0 is the paper's plain version (the borders then see the frames' edges).
    """
    if f < 1:
        raise ValueError(f"stride f must be >= 1, got {f}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    margin = -(-margin // f) * f  # a multiple of f keeps the coarse grid on the image grid
    n, _, height, width = image.shape
    dense = None
    for dy in range(f):
        for dx in range(f):
            # Shift right/down by (dx, dy); pad the far side so the net's coarse grid still
            # covers the last rows/columns whatever H, W mod f are.
            shifted = F.pad(
                image,
                (margin + dx, margin + 2 * f - 1 - dx, margin + dy, margin + 2 * f - 1 - dy),
            )
            coarse = model(shifted)
            if dense is None:
                dense = coarse.new_zeros(n, coarse.shape[1], height, width)
            # Coarse cell a sits at shifted position f * a = image row f * a - margin - dy, so it
            # fills the image rows i >= 0 with i = -dy (mod f), every f-th.
            row0, col0 = (-dy) % f, (-dx) % f
            rows, cols = len(range(row0, height, f)), len(range(col0, width, f))
            a0, b0 = (row0 + margin + dy) // f, (col0 + margin + dx) // f
            if coarse.shape[-2] < a0 + rows or coarse.shape[-1] < b0 + cols:
                raise ValueError(
                    f"model output {tuple(coarse.shape[-2:])} is too small for stride {f} on a "
                    f"{tuple(shifted.shape[-2:])} input: is its stride really {f}?"
                )
            dense[:, :, row0::f, col0::f] = coarse[:, :, a0 : a0 + rows, b0 : b0 + cols]
    return dense
