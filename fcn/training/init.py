"""The initial model of a run, from `--init`: nothing (from scratch), `imagenet` (the backbone's
published weights), a weights file (an ImageNet backbone or a pytorch-fcn .pth), a checkpoint
directory or an MLflow models:/ URI (staged training transplants 32s -> 16s -> 8s).

`check_init` reads the weights once in the driver (a bad file is one line before Ray starts);
`build_initial_model` builds the model in each worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile

import torch

from fcn import storage, tracking
from fcn.config import TrainConfig
from fcn.engine.models import backbone_of, build_model, preprocess, surgery
from fcn.engine.weights import pytorch_fcn
from fcn.tracking.models import load_model

# Remote weights files are kept here, one per file version (see `_local_file`).
CACHE_DIR = "fcn-init"


def _local_file(uri: str) -> str:
    """A local path of the weights file at `uri`. A remote file is downloaded once per node and
    file version into `<tmp>/fcn-init/`, then reused: the driver's check and every worker (and
    every restart) read it, and a copy per read filled the temporary directory."""
    if not storage.is_remote(uri):
        return storage.strip_scheme(uri)
    fs, path = storage.filesystem(uri)
    info = fs.info(path)
    version = info.get("ETag") or info.get("LastModified") or info.get("mtime")
    key = hashlib.sha256(f"{uri}\n{info.get('size')}\n{version}".encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), CACHE_DIR)
    local = os.path.join(cache, f"{key}-{os.path.basename(uri)}")
    if os.path.exists(local):
        return local
    os.makedirs(cache, exist_ok=True)
    fd, partial = tempfile.mkstemp(dir=cache, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(storage.read_bytes(uri))
        os.replace(partial, local)  # whole or absent: workers of one node may race here
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return local


def initial_preprocessing(config: TrainConfig) -> dict:
    """The input spec of the weights `config.init` starts from (data is normalized with it)."""
    if config.init in (None, "", "imagenet"):
        return preprocess.preprocessing_for(config.model, config.init == "imagenet" or None)
    if pytorch_fcn.is_weights_file(config.init):
        path = _local_file(config.init)
        if pytorch_fcn.is_fcn_file(path):
            return preprocess.preprocessing_for(config.model, "pytorch-fcn")
        return preprocess.preprocessing_for(config.model, path)
    return dict(tracking.checked_model(config.init)[1].preprocessing)


def build_initial_model(config: TrainConfig) -> torch.nn.Module:
    """The model to train, from `config.init`; other architectures transplant (32s -> 16s).
    `config.num_classes` must be resolved (see `resolve`)."""
    options = {"learnable_upsampling": config.learnable_upsampling, "width": config.width}
    init = config.init
    if init in (None, "", "imagenet"):
        return build_model(config.model, config.num_classes, init == "imagenet", **options)
    if pytorch_fcn.is_weights_file(init):
        path = _local_file(init)
        if not pytorch_fcn.is_fcn_file(path):  # an ImageNet backbone file
            return build_model(config.model, config.num_classes, path, **options)
        # FCN-8s and at-once weights look alike; a file that does not say which is the model
        # being trained (staging 8s -> 8s-atonce from a bare .pth makes no sense).
        eight = config.model if config.model in ("fcn8s", "fcn8s-atonce") else None
        try:
            source, _ = pytorch_fcn.import_pytorch_fcn(path)
        except ValueError:
            if eight is None:
                raise
            source, _ = pytorch_fcn.import_pytorch_fcn(path, name=eight)
    else:
        source = load_model(init).model
        # Staged training keeps the previous stage's width unless told otherwise.
        options["width"] = config.width or getattr(source, "width", 1.0)
    target = build_model(config.model, config.num_classes, **options)
    surgery.transplant(source, target)
    return target


def check_init(config: TrainConfig) -> tuple[TrainConfig, dict]:
    """(the config with `init` pinned, the input spec of its weights), after checking that the
    weights exist and load. A models:/ alias becomes its version, so every worker and every
    restart loads the same weights; a models:/ version is downloaded once, into a folder
    removed after (`tracking.checked_model`), and its spec kept, so the driver reads it no
    more."""
    init = config.init
    if init in (None, ""):
        return config, initial_preprocessing(config)
    if init == "imagenet":
        try:
            surgery.find_backbone_weights(backbone_of(config.model))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"--init imagenet: {err}") from None
        return config, initial_preprocessing(config)
    if pytorch_fcn.is_weights_file(init):
        if not storage.exists(init):
            raise FileNotFoundError(f"--init {init}: no such weights file")
        try:  # reads the file as the workers will: a corrupt one fails here, once
            return config, initial_preprocessing(config)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as err:  # torch's unpickling and zip errors, many lines each
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"--init {init}: not a weights file torch can load ({type(err).__name__}: {reason})"
            ) from None
    pinned, checked = tracking.checked_model(init)
    return dataclasses.replace(config, init=pinned), dict(checked.preprocessing)
