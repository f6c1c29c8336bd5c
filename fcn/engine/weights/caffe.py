"""The authors' `.caffemodel` files, read without Caffe, and their blobs put into our nets.

A .caffemodel is a binary protobuf `NetParameter`. Only each layer's name and blobs are needed,
so a small wire-format reader walks the bytes (no protobuf schema, no Caffe; nothing is
executed or unpickled). Field numbers, from Caffe's `src/caffe/proto/caffe.proto`:

    NetParameter      layer = 100 (LayerParameter), layers = 2 (V1LayerParameter, legacy)
    LayerParameter    name = 1, type = 2 (string), blobs = 7
    V1LayerParameter  name = 4, type = 5 (enum), blobs = 6; layer = 1 is V0 (refused)
    BlobProto         shape = 7 (BlobShape: dim = 1, packed int64), data = 5 (packed float),
                      double_data = 8 (packed double), legacy num/channels/height/width = 1..4

The reader is size-agnostic: blob data are views into the file's bytes (`np.frombuffer`);
importing a 540 MB FCN-VGG16 file holds the bytes, one tensor copy of the weights and the net
(~1.6 GB at most) and no more. Our state_dict keys are the
Caffe layer names (`conv1_1.weight`, `fc6.bias`, `score_pool4.weight`, `upscore2.weight`...),
so blob i of layer L is parameter i of module L (weight, then bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fcn.engine.models import build_model, preprocess, surgery, vgg

# Caffe itself refuses to parse more than INT_MAX bytes (kProtoReadBytesLimit).
MAX_BYTES = 2**31 - 1
# V1LayerParameter.LayerType values of the layers that carry weights in FCNs.
V1_TYPES = {4: "Convolution", 14: "InnerProduct", 39: "Deconvolution"}
# Where Caffe's reference nets differ from ours in shape, not in name (see alexnet.py).
SHAPE_NOTES = {
    "fcn-alexnet": "the reference FCN-AlexNet is Caffe's AlexNet (96/256/384/384/256 channels, "
    "grouped conv2/4/5); fcn-alexnet here is torchvision's, so its Caffe weights do not fit",
    "fcn-googlenet": "fcn-googlenet here is torchvision's GoogLeNet (batch norm), not Caffe's",
}


class CaffeModelError(ValueError):
    """A file that is not a readable .caffemodel; the message is one line."""


@dataclass(frozen=True)
class CaffeLayer:
    name: str
    type: str
    blobs: tuple[np.ndarray, ...]  # float32, in Caffe's shape; read-only views of the file


# --- protobuf wire format ----------------------------------------------------------------------


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise CaffeModelError("truncated: a number runs past the end of its message")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CaffeModelError(f"malformed: a varint longer than 10 bytes at byte {pos}")


def _fields(buf: bytes, start: int, end: int):
    """Yield (field number, wire type, value) of the message in buf[start:end]; value is the
    number for varints and the (start, stop) byte span for everything else."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CaffeModelError(f"malformed: field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value
            continue
        if wire == 2:
            size, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
        else:  # 3/4 (groups) and 6/7 do not occur in caffe.proto
            raise CaffeModelError(f"malformed: wire type {wire} at byte {pos}")
        if pos + size > end:
            raise CaffeModelError(
                f"truncated: a field of {size} bytes at byte {pos} runs past the end of its "
                f"message (byte {end})"
            )
        yield number, wire, (pos, pos + size)
        pos += size


def _numbers(buf: bytes, wire: int, value, dtype: str) -> np.ndarray:
    """A repeated float/double field: packed (one span) or one element per field."""
    start, stop = value
    size = np.dtype(dtype).itemsize
    if (stop - start) % size or (wire != 2 and stop - start != size):
        raise CaffeModelError(f"malformed: {stop - start} bytes of {dtype} data at byte {start}")
    return np.frombuffer(buf, dtype=dtype, count=(stop - start) // size, offset=start)


def _dims(buf: bytes, start: int, stop: int) -> list[int]:
    """BlobShape.dim (field 1, int64): packed varints or one per field."""
    dims = []
    for number, wire, value in _fields(buf, start, stop):
        if number != 1:
            continue
        if wire == 0:
            dims.append(value)
            continue
        pos, end = value
        while pos < end:
            dim, pos = _varint(buf, pos, end)
            dims.append(dim)
    return dims


def _blob(buf: bytes, start: int, stop: int, where: str) -> np.ndarray:
    shape, legacy, floats, doubles = None, {}, [], []
    for number, wire, value in _fields(buf, start, stop):
        if number == 7 and wire == 2:
            shape = _dims(buf, *value)
        elif number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = value
        elif number == 5 and wire in (2, 5):
            floats.append(_numbers(buf, wire, value, "<f4"))
        elif number == 8 and wire in (2, 1):
            doubles.append(_numbers(buf, wire, value, "<f8"))
    if legacy:  # Caffe's Blob::FromProto: the 4-D fields win when any is set
        shape = [legacy.get(k, 0) for k in (1, 2, 3, 4)]
    parts = floats or doubles
    data = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else np.zeros(0))
    shape = shape or [data.size]
    if any(d >= 2**62 for d in shape) or int(np.prod(shape, dtype=object)) != data.size:
        raise CaffeModelError(f"{where}: shape {tuple(shape)} does not hold {data.size} values")
    return data.astype("<f4", copy=False).reshape(shape)


def _layer(buf: bytes, start: int, stop: int, v1: bool, index: int) -> CaffeLayer:
    name_field, type_field, blobs_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, spans = f"#{index}", "", []
    for number, wire, value in _fields(buf, start, stop):
        if number == name_field and wire == 2:
            try:
                name = buf[value[0] : value[1]].decode("utf-8")
            except UnicodeDecodeError:
                raise CaffeModelError(f"malformed: layer {index} name is not UTF-8") from None
        elif number == type_field:
            kind = (
                V1_TYPES.get(value, f"V1 type {value}")
                if wire == 0
                else buf[value[0] : value[1]].decode("utf-8", "replace")
            )
        elif number == blobs_field and wire == 2:
            spans.append(value)
        elif v1 and number == 1 and wire == 2:
            raise CaffeModelError(
                "a V0-format .caffemodel (2014 or older): upgrade it with Caffe's "
                "upgrade_net_proto_binary first"
            )
    blobs = tuple(_blob(buf, *span, f"layer {name!r} blob {i}") for i, span in enumerate(spans))
    return CaffeLayer(name, kind, blobs)


def read_caffemodel(data: bytes, max_bytes: int = MAX_BYTES) -> list[CaffeLayer]:
    """The layers with weights of a .caffemodel (current `layer` or legacy `layers` format).

    Raises CaffeModelError, one line, for an empty, oversized, truncated or malformed file.
    """
    data = bytes(data)  # np.frombuffer views need a buffer that stays put
    if not data:
        raise CaffeModelError("empty file")
    if len(data) > max_bytes:
        raise CaffeModelError(f"{len(data)} bytes: more than the {max_bytes} read at most")
    layers = []
    for number, wire, value in _fields(data, 0, len(data)):
        if number in (100, 2) and wire == 2:
            layers.append(_layer(data, *value, v1=number == 2, index=len(layers)))
    layers = [layer for layer in layers if layer.blobs]
    if not layers:
        raise CaffeModelError("no layer with weights: not a trained .caffemodel")
    names = [layer.name for layer in layers]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CaffeModelError(f"layer names repeated: {', '.join(repeated)}")
    return layers


# --- blobs -> our nets ---------------------------------------------------------------------------


def _take_scales(model: torch.nn.Module, layers: dict[str, CaffeLayer]) -> None:
    """Check and remove Caffe's fixed Scale layers of FCN-8s at-once: our net applies them as
    constants, so the file's must be those constants, and only an at-once file has them."""
    present = [name for name in surgery.AT_ONCE_SCALE_LAYERS if name in layers]
    if not getattr(model, "at_once", False):
        if present:
            raise ValueError(
                f"the file has FCN-8s at-once's fixed scale layers ({', '.join(present)}): "
                "import it as fcn8s-atonce"
            )
        return
    if len(present) < len(surgery.AT_ONCE_SCALE_LAYERS):
        raise ValueError(
            "the file lacks the scale_pool4/scale_pool3 layers every Caffe FCN-8s at-once has: "
            "these are FCN-8s weights (import them as fcn8s)"
        )
    for skip in model.skips:
        layer = layers.pop(f"scale_{skip.pool}")
        values = np.concatenate([blob.ravel() for blob in layer.blobs])
        if not np.allclose(values, skip.at_once_scale, rtol=1e-6, atol=0):
            raise ValueError(
                f"layer {layer.name!r} scales by {values.min():g}..{values.max():g}; FCN-8s "
                f"at-once scales {skip.pool} by {skip.at_once_scale:g}"
            )


def state_dict_of(layers: list[CaffeLayer], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The file's blobs under `model`'s state_dict keys: blob i of layer L -> the i-th
    parameter of module L. Layers the model lacks keep their own name (`L.blob<i>`), so that
    `surgery.load_exactly` reports them."""
    by_name = {layer.name: layer for layer in layers}
    _take_scales(model, by_name)
    keys: dict[str, list[str]] = {}
    for key in model.state_dict():
        keys.setdefault(key.rsplit(".", 1)[0], []).append(key)
    state = {}
    for name, layer in by_name.items():
        names = keys.get(name, [])
        if names and len(names) != len(layer.blobs):
            raise ValueError(
                f"layer {name!r} has {len(layer.blobs)} blob(s) in the file, the net's "
                f"{len(names)} parameter(s): {', '.join(names)}"
            )
        names = names or [f"{name}.blob{i}" for i in range(len(layer.blobs))]
        for key, blob in zip(names, layer.blobs, strict=True):
            state[key] = torch.tensor(blob)  # a copy: the file's bytes are read-only
    return state


def import_caffemodel(data: bytes, name: str | None = None, max_bytes: int = MAX_BYTES):
    """A .caffemodel's bytes -> `(model, preprocessing)`: our model with its weights, and the
    input spec they expect (Caffe's).

    `name`: the model (default: read from the layers, `surgery.infer_model_name`); the number
    of classes and the VGG width come from the blobs. Raises ValueError with one line when the
    file is not readable or does not fit the net (layers on either side only, shapes).
    """
    layers = read_caffemodel(data, max_bytes)
    blobs = {layer.name: layer.blobs for layer in layers}
    name = name or surgery.infer_model_name(blobs, scales_recorded=True)
    if "score_fr" not in blobs:
        raise ValueError("the file has no 'score_fr' layer: not an FCN")
    options = {}
    if "conv1_1" in blobs and "fc6" in blobs:  # FCN-VGG16: any width
        options["width"] = surgery.vgg_width(blobs["fc6"][0].shape[0])
    model = build_model(name, int(blobs["score_fr"][0].shape[0]), **options)
    try:
        surgery.load_exactly(model, state_dict_of(layers, model), _describe(name, model))
    except ValueError as err:
        note = SHAPE_NOTES.get(name)
        raise ValueError(f"{err} ({note})" if note else str(err)) from None
    return model, preprocess.preprocessing_for(name, "caffe")


def _describe(name: str, model: torch.nn.Module) -> str:
    width = getattr(model, "width", 1.0)
    width_text = f", width {width:g}" if isinstance(model, vgg.FCNVGG16) and width != 1 else ""
    return f"{name} ({model.num_classes} classes{width_text})"
