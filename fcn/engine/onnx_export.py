"""A checkpoint's network as an ONNX model with dynamic batch, height and width.

Ray-free and MLflow-free: jobs/export.py (through fcn.tracking.export), the segment job's
ONNX Runtime actor and the parity tests all export with `export`, so what a serving team gets
from the registry is what the nightly job runs.

The graph is the network alone: input `image` (`N x 3 x H x W` float32, preprocessed as the
checkpoint says), output `logits` (`N x C x H x W`), the same contract as `build_model`. The
preprocessing (channel order, scale, mean, std) and the class names and colours go into the
model's `metadata_props` (keys in METADATA), so the file says how to feed it.

Why the TorchScript exporter (`dynamo=False`) and not torch.export: with torch 2.14 the dynamo
exporter cannot prove the crop bounds of the ceil-mode pools of FCN-AlexNet and FCN-GoogLeNet
for a symbolic height ("Expected op to be '==', got <") and fails, and it takes ~10x longer on
the VGG16 nets. The tracer records `x.shape` reads as Shape ops, so the crops (19 / 27 / 31,
5 / 9, 18, 106) slice at offsets computed from the runtime size; the parity tests
(tests/unit/test_onnx.py) check that at sizes from 1x1 to 1x1000, and that a graph with a size
baked in, or a crop one pixel off, fails them.
"""

from __future__ import annotations

import io
import json
import warnings

import torch

from fcn.engine.checkpoint import CheckpointConfig

INPUT = "image"
OUTPUT = "logits"
# Opset 17: the opset every current ONNX Runtime, TensorRT 8.6+ and OpenVINO read.
OPSET = 17
# metadata_props keys (values are strings; JSON where structured).
METADATA = {
    "fcn.model": "model name (fcn32s, fcn16s, fcn8s, fcn8s-atonce, fcn-alexnet, fcn-googlenet)",
    "fcn.num_classes": "number of classes (channels of `logits`)",
    "fcn.width": "channel width multiplier of a VGG16 net (1 = the paper's network)",
    "fcn.preprocessing": "JSON input spec: x = (pixel / (255 / scale) - mean) / std per channel "
    "in channel_order, NCHW",
    "fcn.classes": "JSON class list: names and RGB colours (the mask palette)",
    "fcn.input": "image: N x 3 x H x W float32, preprocessed; any H, W >= 1",
    "fcn.output": "logits: N x num_classes x H x W float32; the mask is their argmax over C",
}


def metadata(config: CheckpointConfig) -> dict[str, str]:
    """The metadata_props of the ONNX model of a checkpoint with `config`."""
    return {
        "fcn.model": config.model,
        "fcn.num_classes": str(config.num_classes),
        "fcn.width": str(1 if config.width is None else config.width),
        "fcn.preprocessing": json.dumps(dict(config.preprocessing)),
        "fcn.classes": json.dumps(config.classes.to_dict()),
        "fcn.input": METADATA["fcn.input"],
        "fcn.output": METADATA["fcn.output"],
    }


def export(model: torch.nn.Module, config: CheckpointConfig, size: tuple[int, int] = (64, 80)):
    """The ONNX ModelProto of `model` (the checkpoint's net, on CPU) with dynamic N, H, W,
    `metadata(config)` in its metadata_props, checked by onnx's checker. `size`: the example
    input it is traced at (any size: every shape-dependent op reads the runtime shape)."""
    import onnx

    model = model.eval()
    example = torch.zeros(1, 3, *size)
    axes = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The tracer warns that crop's bounds check reads a shape as a Python bool: it is a
        # check (true for every size), not a value in the graph. The exporter's own notice
        # that dynamo is the future: see the module docstring.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=OPSET,
            input_names=[INPUT], output_names=[OUTPUT],
            dynamic_axes={INPUT: axes, OUTPUT: axes},
        )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, metadata(config))
    proto.doc_string = f"FCN {config.model}: logits of a preprocessed image (metadata: fcn.*)"
    onnx.checker.check_model(proto, full_check=True)
    return proto


def read_metadata(proto) -> dict[str, str]:
    """The metadata_props of an ONNX ModelProto as a dict."""
    return {p.key: p.value for p in proto.metadata_props}
