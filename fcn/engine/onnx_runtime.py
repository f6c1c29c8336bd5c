"""An exported FCN on ONNX Runtime, callable like the PyTorch net, and the parity check.

`OnnxModel` takes and returns torch tensors, so `fcn.engine.inference.predict` (argmax,
multi-scale averaging, confidence statistics) runs unchanged on it: the segment job's
`--runtime onnxruntime` actor and the PyTorch actor compute masks and statistics one way.
`parity` compares an ONNX model with the net it came from at given sizes (tests, jobs/export.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fcn.engine.onnx_export import INPUT

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
# Parity bars (tests and jobs/export.py): masks equal on this share of pixels, scores within
# SCORE_ATOL + SCORE_RTOL * |torch score|. fp32 ONNX Runtime kernels sum in another order than
# oneDNN's: measured differences are ~1e-6 on the test nets; a crop off by one pixel moves
# scores by ~1e-2 there.
MASK_AGREEMENT = 0.999
SCORE_ATOL = 1e-4
SCORE_RTOL = 1e-3


class OnnxModel:
    """An ONNX Runtime session as a function `N x 3 x H x W` float tensor -> logits tensor."""

    device = torch.device("cpu")  # inputs and outputs live in host memory, whatever the EP

    def __init__(self, proto_or_bytes, threads: int = 0, cuda: bool = False):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if cuda and CUDA not in available:
            raise ValueError(
                "ONNX Runtime on a GPU needs the onnxruntime-gpu package (this onnxruntime "
                f"offers {', '.join(available)})"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one graph, run op by op: threads go inside the ops
        data = proto_or_bytes
        if not isinstance(data, bytes):
            data = data.SerializeToString()
        providers = [CUDA, CPU] if cuda else [CPU]
        self.session = ort.InferenceSession(data, options, providers=providers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())  # NCHW, as exported
        return torch.from_numpy(self.session.run(None, {INPUT: array})[0])


@dataclass(frozen=True)
class SizeParity:
    size: tuple[int, int]
    shape_ok: bool  # the ONNX logits have the net's shape
    mask_agreement: float  # share of pixels whose argmax agrees (0 when the shapes differ)
    max_score_error: float  # max |onnx - torch| (inf when the shapes differ)
    within_tolerance: bool  # every score within SCORE_ATOL + SCORE_RTOL * |torch|

    @property
    def ok(self) -> bool:
        return self.shape_ok and self.within_tolerance and self.mask_agreement >= MASK_AGREEMENT


def parity(model: torch.nn.Module, onnx_model, sizes, batch: int = 1, seed: int = 0):
    """[SizeParity] of `onnx_model` (an OnnxModel) against `model` (eval, CPU) on random
    normal inputs of each (H, W) in `sizes`. A run that fails in ONNX Runtime (a graph with a
    size baked in refuses others) counts as a shape mismatch."""
    generator = torch.Generator().manual_seed(seed)
    report = []
    for height, width in sizes:
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(x).float()
        try:
            got = onnx_model(x)
        except Exception:  # noqa: BLE001 - onnxruntime's errors share no base class
            got = None
        if got is None or got.shape != expected.shape:
            report.append(SizeParity((height, width), False, 0.0, float("inf"), False))
            continue
        error = (got - expected).abs()
        agreement = (got.argmax(1) == expected.argmax(1)).float().mean().item()
        within = bool((error <= SCORE_ATOL + SCORE_RTOL * expected.abs()).all())
        report.append(SizeParity((height, width), True, agreement, error.max().item(), within))
    return report
