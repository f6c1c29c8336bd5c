"""Shift-and-stitch (docs/paper.md; Long et al. Section 3.2): dense output from an f-strided net.

Run the net on the input shifted right by dx and down by dy for every (dx, dy) in {0..f-1}^2
and interleave the f^2 coarse outputs: cost f^2 forwards, no learned upsampling. The result
equals the dense output of the same net with the stride-f step made stride 1 and every later
filter dilated ("filter rarefaction"), as the test shows. `shift_and_stitch` takes any f-strided
net; `dense_logits` applies it to our single-stride FCNs through their `coarse_score`.
"""

import math

import torch
import torch.nn.functional as F


def shift_and_stitch(
    model, image: torch.Tensor, f: int, margin: int = 0, offset: int = 0
) -> torch.Tensor:
    """Dense `N x C x H x W` output of `model`, a net whose output has stride `f`.

    `model` maps `N x C_in x H' x W'` to `N x C x ~H'/f x ~W'/f`, coarse cell a being input
    position f * a + offset (e.g. an FCN's `coarse_score`: see `dense_logits`). The image is
    zero-padded by
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
            # Coarse cell a sits at shifted position f * a + offset = image row
            # f * a + offset - margin - dy, so it fills the rows i = offset - dy (mod f).
            row0, col0 = (offset - dy) % f, (offset - dx) % f
            rows, cols = len(range(row0, height, f)), len(range(col0, width, f))
            a0 = (row0 - offset + margin + dy) // f
            b0 = (col0 - offset + margin + dx) // f
            if a0 < 0 or b0 < 0:
                raise ValueError(
                    f"no coarse cell covers the first rows/columns (offset {offset}): "
                    f"give a margin >= {offset}"
                )
            if coarse.shape[-2] < a0 + rows or coarse.shape[-1] < b0 + cols:
                raise ValueError(
                    f"model output {tuple(coarse.shape[-2:])} is too small for stride {f} on a "
                    f"{tuple(shifted.shape[-2:])} input: is its stride really {f}?"
                )
            dense[:, :, row0::f, col0::f] = coarse[:, :, a0 : a0 + rows, b0 : b0 + cols]
    return dense


def dense_logits(model, image: torch.Tensor, margin: int = 0) -> torch.Tensor:
    """Shift-and-stitch one of our single-stride FCNs (fcn32s, fcn-alexnet, fcn-googlenet):
    `N x C x H x W` logits from `model.coarse_score` (the scores before the final upsampling),
    in place of the bilinear/learned upscore.

    Costs 32^2 = 1024 forwards. FCN-16s/8s are refused: their fused scores add upsampled
    coarser scores, so shifting the input by 16 or 8 does not shift them by one cell, and
    stitching would not give the dense net (the paper uses skips instead of shift-and-stitch).
    FCN-32s cells sit half a pixel off the pixel grid (32 a + 12.5); each is assigned to the
    pixel half a pixel to its right.
    """
    if getattr(model, "skips", ()):
        raise ValueError(
            "shift-and-stitch needs a single-stride net (fcn32s, fcn-alexnet, fcn-googlenet); "
            "FCN-16s/8s fuse upsampled coarser scores, which shifts by 16/8 do not commute with"
        )
    offset = math.floor(model.coarse_offset + 0.5)
    return shift_and_stitch(model.coarse_score, image, model.coarse_stride, margin, offset)
