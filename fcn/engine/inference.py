"""A trained FCN as the jobs use it: load a checkpoint once, turn uint8 images into class maps.

Ray-free and MLflow-free: `load_model` takes a checkpoint directory (local or object
storage); MLflow's models:/ and runs:/ URIs are resolved a layer up, by
`fcn.tracking.load_model`. Evaluation, the segment job's model actor, training's init,
serving and the GPU benchmark all call these functions, so a mask is computed one way
everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fcn.engine import checkpoint
from fcn.engine.classes import ClassList
from fcn.engine.models.preprocess import normalize
from fcn.engine.models.shift_stitch import dense_logits
from fcn.storage import MLFLOW_SCHEMES


@dataclass(frozen=True)
class LoadedModel:
    model: torch.nn.Module  # eval mode, on the device asked for
    config: checkpoint.CheckpointConfig  # the checkpoint's config.json, checked

    @property
    def preprocessing(self) -> dict:
        """The input spec the weights expect (fcn.engine.models.preprocess)."""
        return dict(self.config.preprocessing)

    @property
    def classes(self) -> ClassList:
        return self.config.classes

    @property
    def num_classes(self) -> int:
        return self.config.num_classes


def load_model(uri: str, device: str | torch.device = "cpu") -> LoadedModel:
    """The model of the checkpoint directory at `uri` (local or object storage), ready to run.

    The weights go channels_last: convolutions run faster in that layout on CPU (~7-15%
    here) and with cuDNN's tensor-core kernels on GPU (benchmarks/gpu.py measures both).
    """
    if uri.startswith(MLFLOW_SCHEMES):
        raise ValueError(f"{uri} is an MLflow URI: load it with fcn.tracking.load_model")
    state_dict, config = checkpoint.load(uri)
    model = config.build_model()
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:  # torch lists every mismatched tensor: one line is enough
        first = str(err).splitlines()[1].strip() if "\n" in str(err) else str(err)
        raise checkpoint.ContractError(
            f"checkpoint {uri}: {checkpoint.MODEL_FILE} does not fit its config.json (model "
            f"{config.model}, num_classes {config.num_classes}, width {config.width or 1}): "
            f"{first}"
        ) from None
    model = model.eval().to(device).to(memory_format=torch.channels_last)
    return LoadedModel(model, config)


# A pixel whose best class has under even odds is a guess (the low-confidence statistic).
LOW_CONFIDENCE = 0.5
STATISTICS = ("mean_entropy", "mean_margin", "low_confidence_fraction")


def predict(model, images, spec, scales=(1.0,), shift_and_stitch: bool = False, statistics=False):
    """uint8 `N x H x W x 3` RGB -> class maps `N x H x W` (uint8 numpy), argmax of the scores;
    with `statistics`, `(class maps, confidence_statistics of the class probabilities)`.

    `scales`: average the class probabilities over these input scales (1.0 alone: one plain
    forward). `shift_and_stitch`: dense logits from the model's coarse scores by
    shift-and-stitch (docs/paper.md) instead of its upsampling layers; stride^2 forwards.
    The segment job's actor, evaluation, the MLflow model and benchmarks/gpu.py all call this.
    `model` is an nn.Module or anything callable on a tensor with a `device` attribute (an
    `fcn.engine.onnx_runtime.OnnxModel`).
    """
    device = getattr(model, "device", None) or next(model.parameters()).device
    x = normalize(images, spec).to(device)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    x = x.contiguous(memory_format=torch.channels_last)  # the layout load_model gives weights
    height, width = x.shape[-2:]

    def logits_at(inp):
        return dense_logits(model, inp) if shift_and_stitch else model(inp)

    with torch.inference_mode():
        if tuple(scales) == (1.0,):
            scores = logits_at(x)  # argmax of the logits = argmax of the probabilities
            probs = scores.float().softmax(1) if statistics else None
        else:
            probs = 0
            for scale in scales:
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                xs = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear")
                logits = logits_at(xs)
                if logits.shape[-2:] != (height, width):
                    logits = F.interpolate(logits, size=(height, width), mode="bilinear")
                probs = probs + logits.float().softmax(1) / len(scales)
            scores = probs
        classes = scores.argmax(1).to(torch.uint8).cpu().numpy()
        return (classes, confidence_statistics(probs)) if statistics else classes


def confidence_statistics(probs: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image of `probs` (N x C x H x W class probabilities): mean pixel entropy (nats), mean
    margin between the best and second-best class, and the share of pixels whose best class has
    a probability under LOW_CONFIDENCE. High entropy, low margin: the model is unsure there."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    top = probs.topk(min(2, probs.shape[1]), dim=1).values
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    low = (top[:, 0] < LOW_CONFIDENCE).float()
    values = (entropy, margin, low)
    return {name: v.mean((1, 2)).cpu().numpy() for name, v in zip(STATISTICS, values, strict=True)}
