"""Published FCN weights (the authors' .caffemodel, pytorch-fcn's .pth) -> a checkpoint.

What jobs/import_model.py does before registering: check the settings without reading the
weights, read the file (`caffe` / `pytorch_fcn`: no code from it runs), build the net, and
write a checkpoint whose config.json records Caffe's preprocessing (every published FCN file
wants BGR, 0-255, VGG mean subtracted) and where the weights came from (`weights_source`,
`weights_format`, `weights_sha256`): the registry copies those onto the model version.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit, urlunsplit

from fcn import storage
from fcn.config import ImportConfig
from fcn.engine import checkpoint
from fcn.engine.classes import ClassList, default_classes, parse_class_list
from fcn.engine.models.surgery import model_name
from fcn.engine.weights import caffe, pytorch_fcn

CAFFEMODEL = "caffemodel"


def weights_format(uri: str) -> str | None:
    """`caffemodel`, `pytorch-fcn`, or None, by the file's suffix."""
    if uri.rstrip("/").lower().endswith(".caffemodel"):
        return CAFFEMODEL
    return pytorch_fcn.FORMAT if pytorch_fcn.is_weights_file(uri) else None


def check_inputs(config: ImportConfig) -> tuple[str, ClassList | None]:
    """(format, class list or None) after checking everything that needs no weights read.
    Raises ValueError / FileNotFoundError with one line."""
    fmt = weights_format(config.source)
    if fmt is None:
        raise ValueError(
            f"--from {config.source!r}: expected a .caffemodel or a pytorch-fcn .pth file"
        )
    fs, path = storage.filesystem(config.source)
    if not fs.isfile(path):
        raise FileNotFoundError(f"--from {config.source!r}: no such file")
    if fs.size(path) > config.max_bytes:
        raise ValueError(
            f"--from {config.source!r}: {fs.size(path)} bytes, more than --max-bytes "
            f"{config.max_bytes}"
        )
    if storage.exists(storage.join(config.output, checkpoint.CONFIG_FILE)):
        raise ValueError(f"--output {config.output!r} holds a checkpoint already; choose another")
    if config.registered_model == "":
        raise ValueError("--registered-model is empty; leave it out to skip registering")
    classes = None
    if config.classes:
        if not storage.exists(config.classes):
            raise FileNotFoundError(f"--classes {config.classes!r}: no such file")
        try:
            classes = parse_class_list(storage.read_text(config.classes))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--classes {config.classes!r}: {err}") from None
    return fmt, classes


def read_weights(config: ImportConfig, fmt: str, data: bytes):
    """The model with the file's weights (they all want Caffe's preprocessing)."""
    if fmt == CAFFEMODEL:
        try:
            return caffe.import_caffemodel(data, config.model, config.max_bytes)[0]
        except caffe.CaffeModelError as err:
            raise ValueError(
                f"--from {config.source!r} is not a readable .caffemodel: {err}"
            ) from None
    try:
        return pytorch_fcn.read_model(data, config.model, config.source.rstrip("/"))
    except pytorch_fcn.UnreadableWeights as err:
        raise ValueError(f"--from {config.source!r} is {err}") from None


def checkpoint_config(config: ImportConfig, model, classes, fmt: str, sha256: str) -> dict:
    width = getattr(model, "width", 1.0)
    return {
        "model": model_name(model),
        "num_classes": model.num_classes,
        **({"width": width} if width != 1 else {}),
        "preprocessing": "caffe",  # every published FCN file (Caffe's, pytorch-fcn's) wants it
        "classes": classes.to_dict(),
        "weights_source": _without_userinfo(config.source),
        "weights_format": fmt,
        "weights_sha256": sha256,
    }


def _without_userinfo(uri: str) -> str:
    """`https://user:secret@host/f.pth` -> `https://host/f.pth`: the source is stored in the
    checkpoint and shown in the registry (object-store URIs with credentials never get here:
    fcn.storage refuses them)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def import_weights(config: ImportConfig) -> dict:
    """Check, read and write `config.source` as the checkpoint `config.output`; returns its
    config.json. Raises ValueError / FileNotFoundError with one line for bad settings or a
    file that is no FCN of a known format."""
    fmt, classes = check_inputs(config)
    data = storage.read_bytes(config.source)
    model = read_weights(config, fmt, data)
    classes = classes or default_classes(model.num_classes)
    if classes.num_classes != model.num_classes:
        raise ValueError(
            f"--classes names {classes.num_classes} classes; the weights score {model.num_classes}"
        )
    saved = checkpoint_config(config, model, classes, fmt, hashlib.sha256(data).hexdigest())
    del data  # up to 2 GB: gone before the checkpoint is written
    checkpoint.save(model.state_dict(), saved, config.output)
    return saved
