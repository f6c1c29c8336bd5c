"""Shift-and-stitch equals the equivalent dilated ("rarefied") network's dense output."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcn.engine.models.shift_stitch import dense_logits, shift_and_stitch

torch.set_num_threads(1)


RADIUS = 12  # >= the receptive-field radius of StridedNet, a multiple of its stride


class StridedNet(nn.Module):
    """conv 3x3 -> ReLU -> max pool 2/2 -> conv 3x3 -> ReLU -> max pool 2/2 -> conv 3x3.

    Output stride 4, receptive-field radius 10 (1 + 1 + 2 + 2 + 4).
    """

    def __init__(self, channels=4, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(2, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.score = nn.Conv2d(channels, classes, 3, padding=1)

    def forward(self, x):  # output stride 4
        h = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2, 2)
        return self.score(h)

    def dense(self, x, margin=RADIUS):
        """The same weights with every pool at stride 1 and later filters dilated by the
        stride so far: the output at every pixel, no subsampling. Computed on the image
        zero-extended by `margin` and cropped back, so borders see the zero-extended image."""
        x = F.pad(x, (margin,) * 4)

        def pool(h, dilation):
            # Window {i, i + d}, as the strided pool's {2a, 2a + 1} at dilation d; zero-padding
            # is harmless after ReLU (values >= 0).
            return F.max_pool2d(F.pad(h, (0, dilation, 0, dilation)), 2, 1, dilation=dilation)

        h = pool(F.relu(self.conv1(x)), 1)
        h = F.conv2d(h, self.conv2.weight, self.conv2.bias, padding=2, dilation=2)
        h = pool(F.relu(h), 2)
        h = F.conv2d(h, self.score.weight, self.score.bias, padding=4, dilation=4)
        return h[..., margin : h.shape[-2] - margin, margin : h.shape[-1] - margin]


@pytest.mark.parametrize("size", [(16, 16), (13, 22), (5, 3), (1, 1)])
@torch.no_grad()
def test_shift_and_stitch_equals_dilated_dense_net(size):
    torch.manual_seed(0)
    net = StridedNet()
    image = torch.randn(2, 2, *size)
    dense = net.dense(image)
    assert dense.shape == (2, 3, *size)
    stitched = shift_and_stitch(net, image, 4, margin=RADIUS)
    torch.testing.assert_close(stitched, dense, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_without_margin_only_the_border_differs():
    # margin=0 (the paper's plain version): the shifted frames' edges reach the outputs near
    # the border only; farther than the receptive-field radius inside, it is the dense output.
    torch.manual_seed(1)
    net = StridedNet()
    image = torch.randn(1, 2, 40, 44)
    stitched = shift_and_stitch(net, image, 4)
    inner = (..., slice(RADIUS, -RADIUS), slice(RADIUS, -RADIUS))
    torch.testing.assert_close(stitched[inner], net.dense(image)[inner], rtol=1e-5, atol=1e-5)


def test_stride_one_is_the_plain_output_and_bad_stride_is_an_error():
    net = nn.Conv2d(2, 3, 3, padding=1)
    image = torch.randn(1, 2, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(shift_and_stitch(net, image, 1), net(image))
    with pytest.raises(ValueError, match="stride"):
        shift_and_stitch(net, image, 0)
    with pytest.raises(ValueError, match="too small"):
        shift_and_stitch(nn.MaxPool2d(8), image, 2)  # really stride 8, not 2


def _probe(name):
    """The model's own geometry on 1 channel (see tests/unit/test_models.py)."""
    from test_models import _geometry_probe

    return _geometry_probe(name).double()


@torch.no_grad()
def test_dense_logits_put_each_coarse_cell_at_its_pixel():
    probe = _probe("fcn-alexnet")  # 1024 shifted runs of a 1-channel net
    image = torch.rand(1, 1, 40, 47, dtype=torch.float64)
    dense = dense_logits(probe, image)
    assert dense.shape == (1, 1, 40, 47)
    # Cell a sits at exactly 32 a + 13 (AlexNet's geometry is integer): the unshifted run
    # gives pixels 13 and 45; pixel 0 is cell 0 of the run shifted right and down by 13.
    coarse = probe.coarse_score(F.pad(image, (0, 63, 0, 63)))
    torch.testing.assert_close(dense[..., 13::32, 13::32], coarse[..., 0:1, 0:2])
    shifted = probe.coarse_score(F.pad(image, (13, 50, 13, 50)))
    torch.testing.assert_close(dense[..., 0, 0], shifted[..., 0, 0])


@torch.no_grad()
def test_dense_logits_are_translation_equivariant_at_stride_one():
    # What shift-and-stitch buys: shifting the image by one pixel shifts the output by one
    # pixel (the coarse net alone commutes only with shifts by its stride, 32).
    probe = _probe("fcn-alexnet")
    image = torch.zeros(1, 1, 20, 20, dtype=torch.float64)
    image[..., 6:12, 5:13] = torch.rand(6, 8, dtype=torch.float64)
    moved = torch.roll(image, shifts=(1, 2), dims=(-2, -1))  # only zeros wrap: a true shift
    dense, dense_moved = dense_logits(probe, image), dense_logits(probe, moved)
    torch.testing.assert_close(dense_moved[..., 1:, 2:], dense[..., :-1, :-2])


def test_dense_logits_refuse_skip_nets():
    with torch.device("meta"):
        from fcn.engine.models import build_model

        model = build_model("fcn8s", num_classes=2)
    with pytest.raises(ValueError, match="single-stride"):
        dense_logits(model, torch.zeros(1, 3, 8, 8))
