""".caffemodel import: files written here with caffe.proto's field numbers (independently of the
reader), in the current `layer` and the legacy V1 `layers` format, from known random blobs.

Nets at width 0.125 (fc6 has 512 channels): the reader and the mapping do not depend on size,
and a paper-size file (~540 MB) has no place in a unit test.
"""

import numpy as np
import pytest
import torch

from fcn.engine.models import build_model, preprocess
from fcn.engine.models.vgg import SKIPS
from fcn.engine.weights.caffe import CaffeModelError, import_caffemodel, read_caffemodel

torch.set_num_threads(1)
WIDTH = 0.125
NUM_CLASSES = 5
V1_CONVOLUTION, V1_DECONVOLUTION, V1_RELU = 4, 39, 18


# --- a protobuf writer for the few caffe.proto messages a .caffemodel needs ----------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def blob_proto(array: np.ndarray, legacy: bool) -> bytes:
    """BlobProto: legacy num/channels/height/width = 1..4 (4-D, leading 1s), else shape = 7
    (BlobShape.dim = 1, packed); data = 5 (packed float)."""
    if legacy:
        dims = (1,) * (4 - array.ndim) + array.shape
        head = b"".join(key(i, 0) + varint(d) for i, d in enumerate(dims, 1))
    else:
        head = length_delimited(7, length_delimited(1, b"".join(varint(d) for d in array.shape)))
    return head + length_delimited(5, array.astype("<f4").tobytes())


def layer_proto(name: str, kind: str, blobs: list[np.ndarray], v1: bool) -> bytes:
    """LayerParameter (name 1, type 2, blobs 7) or V1LayerParameter (name 4, type 5, blobs 6),
    with a nested parameter message the reader must skip."""
    if v1:
        enum = {"Convolution": V1_CONVOLUTION, "Deconvolution": V1_DECONVOLUTION}.get(kind, 0)
        out = length_delimited(4, name.encode()) + key(5, 0) + varint(enum)
        out += length_delimited(10, key(1, 0) + varint(7))  # convolution_param.num_output
        return out + b"".join(length_delimited(6, blob_proto(b, legacy=True)) for b in blobs)
    out = length_delimited(1, name.encode()) + length_delimited(2, kind.encode())
    out += length_delimited(106, key(1, 0) + varint(7))  # convolution_param.num_output
    return out + b"".join(length_delimited(7, blob_proto(b, legacy=False)) for b in blobs)


def caffemodel(layers: list[tuple[str, str, list[np.ndarray]]], v1: bool) -> bytes:
    """NetParameter: name = 1, then `layers` = 2 (V1) or `layer` = 100."""
    out = length_delimited(1, b"test-net")
    field = 2 if v1 else 100
    out += length_delimited(field, layer_proto("data", "Input", [], v1))  # no weights
    for name, kind, blobs in layers:
        out += length_delimited(field, layer_proto(name, kind, blobs, v1))
        out += length_delimited(field, layer_proto(f"relu_{name}", "ReLU", [], v1))
    return out


def reference_net(name: str, seed: int = 0) -> torch.nn.Module:
    """The net the blobs come from: every parameter random (score and upscore layers too)."""
    torch.manual_seed(seed)
    net = build_model(name, NUM_CLASSES, width=WIDTH).eval()
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0, 0.05)
    return net


def blobs_of(net: torch.nn.Module) -> list[tuple[str, str, list[np.ndarray]]]:
    """(layer name, type, blobs) as Caffe saves the net; at-once adds its fixed Scale layers."""
    layers: dict[str, list[np.ndarray]] = {}
    for key_name, tensor in net.state_dict().items():
        layers.setdefault(key_name.rsplit(".", 1)[0], []).append(tensor.numpy().copy())
    out = [(n, "Deconvolution" if "upscore" in n else "Convolution", b) for n, b in layers.items()]
    if getattr(net, "at_once", False):
        for skip in SKIPS:
            channels = net.state_dict()[f"score_{skip.pool}.weight"].shape[1]
            out.append((f"scale_{skip.pool}", "Scale", [np.full(channels, skip.at_once_scale)]))
    return out


# --- the acceptance: every parameter equals its blob, outputs equal the net's ------------------


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "legacy-layers"])
@pytest.mark.parametrize("name", ["fcn32s", "fcn8s", "fcn8s-atonce"])
@torch.no_grad()
def test_a_caffemodel_imports_exactly(name, v1):
    source = reference_net(name)
    data = caffemodel(blobs_of(source), v1)
    model, spec = import_caffemodel(data)  # model, classes and width read from the file
    model.eval()
    assert getattr(model, "at_once", False) == (name == "fcn8s-atonce")
    assert model.num_classes == NUM_CLASSES and model.width == WIDTH
    assert spec == preprocess.CAFFE
    blobs = {n: b for n, _, b in blobs_of(source)}
    for key_name, tensor in model.state_dict().items():
        layer, index = key_name.rsplit(".", 1)[0], 0 if key_name.endswith("weight") else 1
        assert np.array_equal(tensor.numpy(), blobs[layer][index]), key_name
    x = torch.randn(1, 3, 37, 45)
    assert torch.equal(model(x), source(x))


def test_model_named_explicitly_and_file_read_once_more():
    source = reference_net("fcn16s")
    data = caffemodel(blobs_of(source), v1=False)
    model, _ = import_caffemodel(data, "fcn16s")
    torch.testing.assert_close(model.score_pool4.bias, source.score_pool4.bias, rtol=0, atol=0)
    layers = read_caffemodel(data)
    assert [layer.name for layer in layers][:2] == ["conv1_1", "conv1_2"]
    assert layers[0].type == "Convolution" and layers[0].blobs[0].shape == (8, 3, 3, 3)


# --- files that do not fit the net -------------------------------------------------------------


def test_layers_on_either_side_only_are_named():
    data = caffemodel(blobs_of(reference_net("fcn8s")), v1=False)
    with pytest.raises(ValueError) as error:
        import_caffemodel(data, "fcn32s")
    message = str(error.value)
    assert "\n" not in message
    assert "in the weights, not in the net: score_pool3, score_pool4, upscore2" in message
    assert "in the net, not in the weights: upscore" in message


def test_at_once_and_plain_fcn8s_files_are_told_apart():
    at_once = caffemodel(blobs_of(reference_net("fcn8s-atonce")), v1=False)
    plain = caffemodel(blobs_of(reference_net("fcn8s")), v1=False)
    with pytest.raises(ValueError, match="import it as fcn8s-atonce"):
        import_caffemodel(at_once, "fcn8s")
    with pytest.raises(ValueError, match=r"FCN-8s weights \(import them as fcn8s\)"):
        import_caffemodel(plain, "fcn8s-atonce")
    layers = blobs_of(reference_net("fcn8s-atonce"))
    layers[-1][2][0][:] = 0.5  # scale_pool3 not the constant our net applies
    with pytest.raises(ValueError, match="scale_pool3.*scales by 0.5"):
        import_caffemodel(caffemodel(layers, v1=False))


def test_a_shape_mismatch_names_the_blob():
    layers = blobs_of(reference_net("fcn32s"))
    layers[0] = ("conv1_1", "Convolution", [np.zeros((9, 3, 3, 3)), np.zeros(9)])
    with pytest.raises(ValueError, match=r"conv1_1.weight is \(9, 3, 3, 3\) in the weights"):
        import_caffemodel(caffemodel(layers, v1=False))


def test_caffe_alexnet_shapes_are_refused_with_the_reason():
    """The reference FCN-AlexNet is Caffe's AlexNet (96 conv1 filters): our torchvision-shaped
    fcn-alexnet cannot take it (shapes only here: the real fc6 alone is 150 MB)."""
    shapes = {"conv1": (96, 3, 11, 11), "conv2": (256, 48, 5, 5), "conv3": (384, 256, 3, 3)}
    shapes |= {"conv4": (384, 192, 3, 3), "conv5": (256, 192, 3, 3), "fc6": (4, 256, 6, 6)}
    shapes |= {"fc7": (4, 4, 1, 1), "score_fr": (21, 4, 1, 1)}
    layers = [(n, "Convolution", [np.zeros(s), np.zeros(s[0])]) for n, s in shapes.items()]
    layers.append(("upscore", "Deconvolution", [np.zeros((21, 21, 63, 63))]))
    with pytest.raises(ValueError, match="conv1.weight.*Caffe's AlexNet"):
        import_caffemodel(caffemodel(layers, v1=False))


# --- files that are not .caffemodels ----------------------------------------------------------


@pytest.fixture(scope="module")
def good_file() -> bytes:
    return caffemodel(blobs_of(reference_net("fcn32s")), v1=False)


@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.5, 0.999])
def test_truncated_files_fail_with_one_line(good_file, fraction):
    with pytest.raises(CaffeModelError) as error:
        import_caffemodel(good_file[: int(len(good_file) * fraction)])
    assert "\n" not in str(error.value) and "truncated" in str(error.value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<html><body>404 Not Found</body></html>",
        np.random.default_rng(0).bytes(4096),
        np.random.default_rng(1).bytes(100_000),
        b"PK\x03\x04" + bytes(200),  # the start of a torch.save zip file
        b"\x80\x02}q\x00(X\x05\x00\x00\x00",  # a pickle
    ],
    ids=["empty", "html", "random-4k", "random-100k", "zip", "pickle"],
)
def test_garbage_fails_with_one_line(data):
    with pytest.raises(CaffeModelError) as error:
        read_caffemodel(data)
    assert "\n" not in str(error.value)


def test_a_size_cap_refuses_before_parsing(good_file):
    with pytest.raises(CaffeModelError, match="more than the 1000"):
        read_caffemodel(good_file, max_bytes=1000)


def test_v0_files_are_refused_with_what_to_do():
    v0 = length_delimited(1, length_delimited(1, b"conv1"))  # V1LayerParameter.layer (V0)
    with pytest.raises(CaffeModelError, match="upgrade_net_proto_binary"):
        read_caffemodel(length_delimited(2, v0))


def test_double_and_unpacked_data_are_read():
    values = np.array([1.5, -2.25, 3.0])
    doubles = length_delimited(8, values.astype("<f8").tobytes())
    unpacked = b"".join(key(5, 5) + np.float32(v).tobytes() for v in values)
    for data in (doubles, unpacked):
        layer = length_delimited(1, b"w") + length_delimited(7, data)
        (read,) = read_caffemodel(length_delimited(100, layer))
        assert read.blobs[0].dtype == np.float32 and read.blobs[0].tolist() == values.tolist()
