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

from fcn.config.tiling import DEFAULT_TILE_MEMORY
from fcn.engine import checkpoint, tiles
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


def predict(
    model, images, spec, scales=(1.0,), shift_and_stitch: bool = False, statistics=False,
    tile: int | str | None = None, tile_memory: int = DEFAULT_TILE_MEMORY,
    tile_margin: int | None = None,
):  # fmt: skip
    """uint8 `N x H x W x 3` RGB -> class maps `N x H x W` (uint8 numpy), argmax of the scores;
    with `statistics`, `(class maps, confidence_statistics of the class probabilities)`.

    `scales`: average the class probabilities over these input scales (1.0 alone: one plain
    forward). `shift_and_stitch`: dense logits from the model's coarse scores by
    shift-and-stitch (docs/paper.md) instead of its upsampling layers; stride^2 forwards.
    `tile`: None or "none" (whole images), a tile side in pixels, or "auto" (tiles of the
    largest side that fits `tile_memory` bytes, only when the whole batch does not fit;
    shift-and-stitch, a paper experiment of stride^2 forwards, always runs whole images):
    tiles give the whole-image masks (fcn.engine.tiles), and scores are never held for more
    than one tile. `tile_margin`: pixels discarded at inner tile borders, None for the net's
    receptive field (exact masks; fcn.engine.tiles.margin_of). The segment job's actor,
    evaluation, the MLflow model and benchmarks/gpu.py all call this. `model` is an nn.Module
    or anything callable on a tensor with a `device` attribute (an
    `fcn.engine.onnx_runtime.OnnxModel`; such a model declares no receptive field, so `auto`
    runs it on whole images).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if shift_and_stitch and tile not in (None, "none", "auto"):
        raise ValueError(
            "--shift-and-stitch runs whole images (its shifted inputs would cross tile borders):"
            " use --tile none or auto"
        )
    if shift_and_stitch:
        return _predict_whole(model, images, spec, scales, shift_and_stitch, statistics)
    side = _tile_side(model, images.shape, scales, tile, tile_memory, tile_margin)
    if side is None:
        return _predict_whole(model, images, spec, scales, False, statistics)
    margin = tiles.margin_of(model, min(scales), tile_margin)
    return _predict_tiled(model, images, spec, scales, statistics, side, margin)


def _tile_side(model, shape, scales, tile, budget, margin) -> int | None:
    """The tile side `tile` asks for these images, None for whole images."""
    if tile in (None, "none"):
        return None
    n, height, width = shape[:3]
    scale = min(scales)
    if tile == "auto":
        if getattr(model, "context", None) is None:
            return None
        classes = _num_classes(model)
        if tiles.estimate_bytes(model, height, width, classes, n) * max(scales) ** 2 <= budget:
            return None
        side = tiles.auto_side(model, budget / max(scales) ** 2, classes, scale, margin)
    else:
        side = tiles.check_side(model, int(tile), scale, margin)
    return None if side >= height and side >= width else side


def _num_classes(model) -> int:
    return getattr(model, "num_classes", None) or 21


def _logits(model, x, height, width, scales, shift_and_stitch):
    """Class probabilities (multi-scale) or logits (one scale) of `x`, N x C x H x W."""

    def logits_at(inp):
        return dense_logits(model, inp) if shift_and_stitch else model(inp)

    if tuple(scales) == (1.0,):
        return logits_at(x), False
    probs = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        xs = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear")
        logits = logits_at(xs)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear")
        probs = probs + logits.float().softmax(1) / len(scales)
    return probs, True


def _input(model, images, spec):
    device = getattr(model, "device", None) or next(model.parameters()).device
    x = normalize(images, spec, channels_last=True).to(device)
    return x.contiguous(memory_format=torch.channels_last)  # the layout load_model gives weights


def _predict_whole(model, images, spec, scales, shift_and_stitch, statistics):
    x = _input(model, images, spec)
    height, width = x.shape[-2:]
    with torch.inference_mode():
        scores, are_probs = _logits(model, x, height, width, scales, shift_and_stitch)
        # argmax of the logits = argmax of the probabilities
        probs = (scores if are_probs else scores.float().softmax(1)) if statistics else None
        classes = class_map(scores)
        return (classes, confidence_statistics(probs)) if statistics else classes


def _predict_tiled(model, images, spec, scales, statistics, side, margin):
    """As `_predict_whole`, one tile at a time: class maps filled and statistics summed per
    tile (each tile's kept part only), so no whole-image score map ever exists."""
    n, height, width = images.shape[:3]
    classes = np.empty((n, height, width), np.uint8)
    sums = np.zeros((n, len(STATISTICS)))
    rows, cols = tiles.spans(height, side, margin), tiles.spans(width, side, margin)
    with torch.inference_mode():
        for i in range(n):
            for r in rows:
                for c in cols:
                    x = _input(model, images[i : i + 1, r.tile, c.tile], spec)
                    scores, are_probs = _logits(
                        model, x, r.stop - r.start, c.stop - c.start, scales, False
                    )
                    kept = scores[:, :, r.kept_in_tile, c.kept_in_tile]
                    classes[i, r.kept, c.kept] = class_map(kept)[0]
                    if statistics:
                        probs = kept if are_probs else kept.float().softmax(1)
                        sums[i] += [v[0] for v in _statistic_sums(probs)]
    if not statistics:
        return classes
    means = sums / (height * width)
    return classes, {name: means[:, k] for k, name in enumerate(STATISTICS)}


def class_map(scores: torch.Tensor) -> np.ndarray:
    """N x C x H x W scores -> N x H x W uint8 classes (the first best class where two tie, as
    `argmax`). On CPU the scores are first laid out channels-last: the upsampling layer returns
    them channels-first, where PyTorch's reduction over C strides through memory and took ~40 %
    of a small net's tiled forward (a 1568^2 tile: 0.39 s; copied then reduced: 0.04 s)."""
    if scores.device.type == "cpu":
        scores = scores.contiguous(memory_format=torch.channels_last)
    return scores.max(1).indices.to(torch.uint8).cpu().numpy()


def _statistic_sums(probs: torch.Tensor) -> tuple[np.ndarray, ...]:
    """Per image of `probs`: summed pixel entropy, margin and low-confidence pixels."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(1)
    top = probs.topk(min(2, probs.shape[1]), dim=1).values
    margin = top[:, 0] - top[:, 1] if top.shape[1] > 1 else top[:, 0]
    low = (top[:, 0] < LOW_CONFIDENCE).float()
    return tuple(v.double().sum((1, 2)).cpu().numpy() for v in (entropy, margin, low))


def confidence_statistics(probs: torch.Tensor) -> dict[str, np.ndarray]:
    """Per image of `probs` (N x C x H x W class probabilities): mean pixel entropy (nats), mean
    margin between the best and second-best class, and the share of pixels whose best class has
    a probability under LOW_CONFIDENCE. High entropy, low margin: the model is unsure there."""
    pixels = probs.shape[-2] * probs.shape[-1]
    sums = _statistic_sums(probs)
    return {name: v / pixels for name, v in zip(STATISTICS, sums, strict=True)}
