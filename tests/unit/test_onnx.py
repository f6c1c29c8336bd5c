"""ONNX export parity (issue 29): every FCN exported once with dynamic height and width gives
ONNX Runtime's masks equal to PyTorch's on >= 99.9% of the pixels, with scores within
SCORE_ATOL + SCORE_RTOL * |score|, at hostile sizes; and the check catches the classic export
bugs: a crop one pixel off, and a graph with the trace's size baked in.

Small nets, random weights (every convolution Kaiming-initialized so the argmax varies over
the image: a fresh net's zero score layers would paint one class and prove nothing): the
VGG16 variants at 1/16 width; FCN-AlexNet and FCN-GoogLeNet have no width option.
"""

from __future__ import annotations

import dataclasses
import io
import json

import onnx
import pytest
import torch

from fcn.engine import inference, onnx_export, onnx_runtime
from fcn.engine.checkpoint import CheckpointConfig
from fcn.engine.models import MODEL_NAMES, backbone_of, build_model
from fcn.engine.models.layers import crop

SIZES = [(1, 1), (31, 47), (500, 375), (375, 500), (1, 1000)]
NUM_CLASSES = 5


def varied(name: str):
    torch.manual_seed(0)
    width = 0.0625 if backbone_of(name) == "vgg16" else None
    model = build_model(name, NUM_CLASSES, width=width)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    config = CheckpointConfig.from_dict(
        {
            "model": name,
            "num_classes": NUM_CLASSES,
            "preprocessing": "caffe",
            **({"width": width} if width else {}),
        }  # fmt: skip
    )
    return model.eval(), config


# FCN-AlexNet and FCN-GoogLeNet run at full width (~30-60 s each on 2 shared cores).
FULL_WIDTH = pytest.mark.slow


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=FULL_WIDTH) if backbone_of(n) != "vgg16" else n for n in MODEL_NAMES],
)
def test_onnx_runtime_gives_pytorchs_masks_at_hostile_sizes(name):
    model, config = varied(name)
    proto = onnx_export.export(model, config)  # once, reused at every size
    report = onnx_runtime.parity(model, onnx_runtime.OnnxModel(proto), SIZES)
    assert [p.size for p in report] == SIZES
    for p in report:
        assert p.ok, p
    assert report[2].mask_agreement >= onnx_runtime.MASK_AGREEMENT
    # The check compares something: scores that differ between classes and across the image
    # (a random net's argmax may still be one class, so the masks alone would not say).
    x = torch.randn(1, 3, 375, 500, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model(x)
    assert logits.std(dim=1).mean() > 1e-3 and logits.std(dim=(2, 3)).mean() > 1e-3
    # The file says how to feed it, and its inputs are dynamic.
    meta = onnx_export.read_metadata(proto)
    assert meta["fcn.model"] == name and meta["fcn.num_classes"] == str(NUM_CLASSES)
    assert json.loads(meta["fcn.preprocessing"])["channel_order"] == "BGR"
    assert json.loads(meta["fcn.classes"])["names"] == [str(i) for i in range(NUM_CLASSES)]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]


def test_predict_on_onnx_runtime_gives_the_same_masks_and_statistics():
    """The nightly actor's path: `inference.predict` on the OnnxModel, multi-scale too."""
    model, config = varied("fcn8s")
    model = model.to(memory_format=torch.channels_last)  # as load_model gives it
    onnx_model = onnx_runtime.OnnxModel(onnx_export.export(model, config), threads=1)
    images = torch.randint(0, 256, (2, 37, 53, 3), dtype=torch.uint8).numpy()
    for scales in ((1.0,), (0.5, 1.0, 1.5)):
        want, want_stats = inference.predict(model, images, "caffe", scales, statistics=True)
        got, got_stats = inference.predict(onnx_model, images, "caffe", scales, statistics=True)
        assert (want == got).mean() >= onnx_runtime.MASK_AGREEMENT
        for key, value in want_stats.items():
            assert got_stats[key] == pytest.approx(value, abs=1e-4), key


def test_a_crop_one_pixel_off_fails_the_check():
    model, config = varied("fcn32s")
    shifted = build_model("fcn32s", NUM_CLASSES, width=0.0625)
    shifted.load_state_dict(model.state_dict())
    shifted.final = dataclasses.replace(shifted.final, crop=shifted.final.crop + 1)  # 20
    onnx_model = onnx_runtime.OnnxModel(onnx_export.export(shifted.eval(), config))
    report = onnx_runtime.parity(model, onnx_model, SIZES)
    assert not any(p.ok for p in report if p.size != (1, 1)), report
    assert all(p.shape_ok for p in report)  # right shape, wrong pixels: the scores tell


class BakedCrop(torch.nn.Module):
    """FCN-32s whose final crop takes the size as Python ints: the tracer records constants."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        score = self.net.upscore(self.net.coarse_score(x))
        return crop(score, 19, int(x.shape[-2]), int(x.shape[-1]))


def test_a_graph_with_the_trace_size_baked_in_fails_the_check():
    model, config = varied("fcn32s")
    baked = onnx_export.export(BakedCrop(model), config, size=(64, 80))
    report = onnx_runtime.parity(model, onnx_runtime.OnnxModel(baked), [(64, 80), *SIZES])
    assert report[0].ok  # right at the traced size...
    assert not any(p.ok for p in report[1:]), report  # ...wrong at every other one
    # And a graph exported without dynamic axes refuses other sizes outright.
    buffer = io.BytesIO()
    names = {"input_names": [onnx_export.INPUT], "output_names": [onnx_export.OUTPUT]}
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 80),), buffer, dynamo=False, **names)
    fixed = onnx_runtime.OnnxModel(onnx.load_from_string(buffer.getvalue()))
    report = onnx_runtime.parity(model, fixed, SIZES)
    assert not any(p.shape_ok for p in report)


def test_a_gpu_session_without_the_cuda_provider_is_one_clear_error():
    import onnxruntime

    if onnx_runtime.CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    model, config = varied("fcn32s")
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        onnx_runtime.OnnxModel(onnx_export.export(model, config), cuda=True)


def test_the_export_job_and_the_segment_setting_refuse_what_cannot_work(tmp_path, capsys):
    import importlib.util

    from conftest import REPO

    from fcn.config import SegmentConfig

    spec = importlib.util.spec_from_file_location("export_job", REPO / "jobs" / "export.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    out = str(tmp_path / "onnx")
    assert job.main(["--model", str(tmp_path), "--output", out, "--register"]) == 2
    assert capsys.readouterr().err.startswith("error: --register attaches")
    assert job.main(["--model", str(tmp_path), "--output", out, "--check-sizes", "0x5"]) == 2
    assert "error: --check-sizes: '0x5'" in capsys.readouterr().err
    assert job.main(["--model", str(tmp_path), "--output", out]) == 2  # no checkpoint there
    assert capsys.readouterr().err.count("\n") == 1
    night = SegmentConfig(input="i", output="o", model="m", runtime="onnxruntime",
                          shift_and_stitch=True)  # fmt: skip
    with pytest.raises(ValueError, match="--shift-and-stitch .* --runtime torch"):
        night.validate()
