"""Surgery: stage transplants, torchvision backbone weights, pytorch-fcn checkpoint import."""

import pytest
import torch
import torchvision
from torch import nn

from fcn.engine.models import build_model, preprocess
from fcn.engine.models.layers import crop
from fcn.engine.models.surgery import (
    fcn8s_from_fcn16s,
    fcn16s_from_fcn32s,
    torchvision_weights_file,
    transplant,
)
from fcn.engine.weights.pytorch_fcn import import_pytorch_fcn

torch.set_num_threads(1)


def _score_input(model, x, layer):
    """Input of `layer` during `model(x)` (what the final upsampling receives)."""
    seen = {}

    def hook(_module, inputs, _output):
        seen["x"] = inputs[0]  # returns None: the output is left alone

    handle = layer.register_forward_hook(hook)
    try:
        out = model(x)
    finally:
        handle.remove()
    return seen["x"], out


def _train_a_little(layer: nn.Conv2d, seed: int):
    """Stand-in for training: non-zero score weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.normal_(0, 0.01, generator=gen)
        layer.bias.normal_(0, 1, generator=gen)


@torch.no_grad()
def test_staged_transplants_32s_to_16s_to_8s_start_from_the_previous_stage():
    """The new skip adds exactly zero: FCN-16s built from a trained FCN-32s scores with the
    32s's coarse score alone (same backbone, same score_fr), and FCN-8s from FCN-16s with the
    16s's fused score alone. (The 2x-then-16x bilinear path itself is not the one 32x bilinear
    operator, as in the reference models, so the comparison is made at the fused score.)"""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 40, 50)
    fcn32s = build_model("fcn32s", num_classes=3).eval()
    _train_a_little(fcn32s.score_fr, 1)
    fcn16s = fcn16s_from_fcn32s(fcn32s).eval()
    for name, tensor in fcn32s.state_dict().items():
        if name != "upscore.weight":
            torch.testing.assert_close(fcn16s.state_dict()[name], tensor, rtol=0, atol=0)
    assert fcn16s.score_pool4.weight.abs().sum() == 0

    coarse32, _ = _score_input(fcn32s, x, fcn32s.upscore)
    fused16, out16 = _score_input(fcn16s, x, fcn16s.upscore16)
    torch.testing.assert_close(fused16, fcn16s.upscore2(coarse32), rtol=1e-6, atol=1e-6)
    assert out16.shape == (1, 3, 40, 50)

    _train_a_little(fcn16s.score_pool4, 2)
    fused16, out16 = _score_input(fcn16s, x, fcn16s.upscore16)
    fcn8s = fcn8s_from_fcn16s(fcn16s).eval()
    assert fcn8s.score_pool3.weight.abs().sum() == 0
    torch.testing.assert_close(fcn8s.score_pool4.weight, fcn16s.score_pool4.weight)
    fused8, out8 = _score_input(fcn8s, x, fcn8s.upscore8)
    torch.testing.assert_close(fused8, fcn8s.upscore_pool4(fused16), rtol=1e-6, atol=1e-6)
    assert out8.shape == (1, 3, 40, 50)
    # And the stage output stays the previous stage's, up to the bilinear-path difference.
    assert torch.corrcoef(torch.stack([out8.flatten(), out16.flatten()]))[0, 1] > 0.9


def test_transplant_refuses_a_different_num_classes():
    with torch.device("meta"):
        source, target = build_model("fcn32s", 21), build_model("fcn16s", 5)
    with pytest.raises(ValueError, match="num_classes"):
        transplant(source, target)


# ---- torchvision backbone weights ------------------------------------------------------------


def test_pretrained_without_the_file_names_file_and_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        build_model("fcn32s", pretrained=True)
    message = str(error.value)
    assert "vgg16-397923af.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_model("fcn-alexnet", pretrained=str(tmp_path / "nowhere.pth"))


@torch.no_grad()
def test_pretrained_googlenet_loads_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    # What torchvision caches: the full net, auxiliary heads included.
    net = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(net.state_dict(), checkpoints / torchvision_weights_file("googlenet"))

    model = build_model("fcn-googlenet", num_classes=4, pretrained=True)
    torch.testing.assert_close(
        model.inception5b.branch1.conv.weight, net.inception5b.branch1.conv.weight
    )
    torch.testing.assert_close(model.conv1.bn.running_var, net.conv1.bn.running_var)
    assert model.score_fr.weight.abs().sum() == 0
    assert preprocess.preprocessing_for("fcn-googlenet", True)["name"] == "torchvision"
    assert not hasattr(model, "preprocessing")  # the spec travels in configs, not on modules


def test_pretrained_from_a_wrong_file_fails_loudly(tmp_path):
    path = tmp_path / "not_alexnet.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(RuntimeError, match="state_dict"):
        build_model("fcn-alexnet", pretrained=str(path))


# ---- pytorch-fcn checkpoints -----------------------------------------------------------------


def pytorch_fcn_shapes(name: str, n_class: int) -> dict:
    """Parameter names and shapes of wkentaro/pytorch-fcn's FCN32s/16s/8s/8sAtOnce, written out
    from its model definitions (torchfcn/models/fcn*.py), independently of our code."""
    shapes = {}
    channels = [(3, 64), (64, 64), (64, 128), (128, 128)] + [(128, 256), (256, 256), (256, 256)]
    channels += [(256, 512)] + [(512, 512)] * 5
    layer_names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3"]
    layer_names += ["conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    for layer, (cin, cout) in zip(layer_names, channels, strict=True):
        shapes[f"{layer}.weight"], shapes[f"{layer}.bias"] = (cout, cin, 3, 3), (cout,)
    shapes |= {"fc6.weight": (4096, 512, 7, 7), "fc6.bias": (4096,)}
    shapes |= {"fc7.weight": (4096, 4096, 1, 1), "fc7.bias": (4096,)}
    shapes |= {"score_fr.weight": (n_class, 4096, 1, 1), "score_fr.bias": (n_class,)}
    if name == "fcn32s":
        return shapes | {"upscore.weight": (n_class, n_class, 64, 64)}
    shapes |= {"score_pool4.weight": (n_class, 512, 1, 1), "score_pool4.bias": (n_class,)}
    shapes |= {"upscore2.weight": (n_class, n_class, 4, 4)}
    if name == "fcn16s":
        return shapes | {"upscore16.weight": (n_class, n_class, 32, 32)}
    shapes |= {"score_pool3.weight": (n_class, 256, 1, 1), "score_pool3.bias": (n_class,)}
    shapes |= {"upscore_pool4.weight": (n_class, n_class, 4, 4)}
    return shapes | {"upscore8.weight": (n_class, n_class, 16, 16)}


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
def test_pytorch_fcn_state_dict_loads_strict(name):
    expected = pytorch_fcn_shapes(name, 21)
    with torch.device("meta"):
        model = build_model(name, num_classes=21)
        state = {k: torch.empty(shape) for k, shape in expected.items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    model.load_state_dict(state, strict=True)


def test_import_pytorch_fcn_checkpoints(tmp_path):
    torch.manual_seed(0)
    source = build_model("fcn8s", num_classes=21)
    _train_a_little(source.score_pool3, 3)
    state = source.state_dict()
    # Its training checkpoint (torchfcn.Trainer) ...
    training = tmp_path / "checkpoint.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "iteration": 1000,
            "arch": "FCN8sAtOnce",
            "optim_state_dict": {"state": {}, "param_groups": []},
            "model_state_dict": state,
            "best_mean_iu": 0.65,
        },
        training,
    )
    model, spec = import_pytorch_fcn(training)
    assert model.at_once and spec == preprocess.CAFFE and not hasattr(model, "preprocessing")
    torch.testing.assert_close(model.score_pool3.bias, source.score_pool3.bias)
    del model
    # ... and a Caffe-converted bare state_dict, named as pytorch-fcn names them.
    bare = tmp_path / "fcn8s-atonce_from_caffe.pth"
    torch.save(state, bare)
    model, spec = import_pytorch_fcn(bare)
    assert model.at_once and model.num_classes == 21 and spec["name"] == "caffe"
    torch.testing.assert_close(model.fc7.weight, source.fc7.weight)


def test_import_infers_the_model_from_the_keys():
    with torch.device("meta"):
        state = build_model("fcn16s", num_classes=5).state_dict()
        model, spec = import_pytorch_fcn(state)
    assert len(model.skips) == 1 and model.num_classes == 5 and spec["channel_order"] == "BGR"
    with pytest.raises(ValueError, match="score_fr"):
        import_pytorch_fcn({"conv1_1.weight": torch.zeros(1)})


def test_crop_helper_is_what_the_models_use():
    assert crop(torch.zeros(1, 2, 50, 60), 19, 10, 20).shape == (1, 2, 10, 20)


def test_fcn8s_or_at_once_weights_without_a_name_are_refused():
    """Same parameters, outputs 100x / 10,000x apart on the skips: a bare state_dict with
    nothing naming it must not silently become FCN-8s (issue 18, item 4)."""
    with torch.device("meta"):
        state = build_model("fcn8s-atonce", num_classes=21).state_dict()
        with pytest.raises(ValueError, match="fcn8s or fcn8s-atonce"):
            import_pytorch_fcn(state)
        model, _ = import_pytorch_fcn(state, "fcn8s-atonce")
        assert model.at_once
        model, _ = import_pytorch_fcn(state, file_name="fcn8s-atonce_from_caffe.pth")
        assert model.at_once
        model, _ = import_pytorch_fcn(state, file_name="fcn8s_from_caffe.pth")
        assert not model.at_once


def test_import_reads_the_width_and_names_mismatches_in_one_line():
    with torch.device("meta"):
        state = build_model("fcn16s", num_classes=3, width=0.25).state_dict()
        model, _ = import_pytorch_fcn(state)
        assert model.width == 0.25 and len(model.skips) == 1
        with pytest.raises(ValueError) as error:
            import_pytorch_fcn(state, "fcn32s")
    message = str(error.value)
    assert "\n" not in message
    assert "in the weights, not in the net: score_pool4, upscore16, upscore2" in message


@pytest.mark.parametrize(
    "name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn-alexnet", "fcn-googlenet"]
)
def test_model_name_inverts_build_model(name):
    from fcn.engine.models.surgery import model_name

    with torch.device("meta"):
        assert model_name(build_model(name, num_classes=3)) == name
