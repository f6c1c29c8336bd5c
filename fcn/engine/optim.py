"""Optimizer recipes, parameter groups and the per-pixel loss (docs/paper.md, "Training").

Presets keep the published recipes available unchanged; `fast` is our own addition for
training from scratch on a CPU in minutes (no ImageNet weights can be downloaded there), and
says so. Any field set explicitly in TrainConfig overrides its preset value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fcn.engine.classes import VOID


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # "sgd" | "adam"
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int  # images per iteration over all workers
    loss: str  # "sum" | "mean"
    # lr multiplier of the new score layers (score_fr, score_pool*), Caffe's lr_mult on new
    # layers: 1 in the published recipes.
    score_lr_mult: float = 1.0


# Paper: SGD momentum 0.9, minibatch 20, lr 1e-4 (FCN-VGG16), weight decay 5e-4.
PAPER = Recipe("sgd", 1e-4, 0.9, 5e-4, 20, "mean")
# Reference repo "heavy": batch 1, summed loss, momentum 0.99; the tiny lr compensates the
# sum over ~500x500 pixels and shrinks 100x per stage (32s 1e-10, 16s 1e-12, 8s 1e-14).
HEAVY_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}
HEAVY = Recipe("sgd", 1e-10, 0.99, 5e-4, 1, "sum")
# Not from the paper: for a randomly initialized VGG16 on a CPU (no ImageNet weights there).
# Adam adapts per-parameter step sizes to the random backbone's tiny activations (~0.02),
# where SGD at these rates barely moves. Measured on the synthetic data at --width 0.25:
# mean IU leaves the all-background plateau after ~100 steps with balanced-sqrt class weights
# (300 without), and score_lr_mult 10 made it oscillate.
FAST = Recipe("adam", 1e-4, 0.9, 0.0, 2, "mean")
PRESETS = {"paper": PAPER, "heavy": HEAVY, "fast": FAST}
BIAS_LR_MULT = 2.0  # docs/paper.md: biases at twice the learning rate, without weight decay


def recipe(config) -> Recipe:
    """The preset named by `config.preset` with every explicitly set field applied."""
    if config.preset not in PRESETS:
        raise ValueError(f"unknown preset {config.preset!r}; choose one of {sorted(PRESETS)}")
    base = _heavy(config.model) if config.preset == "heavy" else PRESETS[config.preset]
    overrides = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(Recipe)
        if getattr(config, f.name, None) is not None
    }
    result = dataclasses.replace(base, **overrides)
    if result.batch_size < 1 or result.lr <= 0:
        raise ValueError(f"batch_size must be >= 1 and lr > 0, got {result}")
    return result


def _heavy(model: str) -> Recipe:
    """The reference repo's solver for `model`: its heavy recipe (VGG16 nets, lr by stage), the
    paper's recipe for FCN-AlexNet; a clear error for a model it has no solver for."""
    if model == "fcn-alexnet":
        # The reference repo's AlexNet solver is not "heavy": lr 1e-4, momentum 0.9, a
        # normalized loss over 20 images per update, i.e. the paper's recipe.
        return PAPER
    if model not in HEAVY_LR:
        raise ValueError(
            f"--preset heavy: the reference repo has no solver for {model}; use --preset paper"
        )
    return dataclasses.replace(HEAVY, lr=HEAVY_LR[model])


def parameter_groups(
    model: nn.Module, lr: float, weight_decay: float, score_lr_mult: float = 1.0
) -> list[dict]:
    """Weights at `lr` with decay, biases at 2x `lr` without (score layers: x score_lr_mult);
    frozen parameters left out, empty groups dropped."""
    groups = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        bias = name.endswith("bias")
        scale = (BIAS_LR_MULT if bias else 1.0) * (
            score_lr_mult if name.startswith("score") else 1.0
        )
        key = (scale, 0.0 if bias else weight_decay)
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "lr": lr * scale, "weight_decay": decay}
        for (scale, decay), params in groups.items()
    ]


def build_optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    groups = parameter_groups(model, r.lr, r.weight_decay, r.score_lr_mult)
    if r.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=r.lr, momentum=r.momentum)
    if r.optimizer == "adam":
        return torch.optim.Adam(groups, lr=r.lr, betas=(r.momentum, 0.999))
    raise ValueError(f"unknown optimizer {r.optimizer!r}; use sgd or adam")


def freeze_all_but_classifier(model: nn.Module) -> None:
    """Train the score layers only ("fine-tuning the output classifier alone")."""
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("score")


def sample_loss_cells(mask: torch.Tensor, drop: float, cell: int, generator=None) -> torch.Tensor:
    """Spatial loss sampling: void whole `cell` x `cell` blocks of `mask` with probability `drop`.

    A block is one cell of the final (stride-`cell`) score map, so this is the paper's
    patchwise-training equivalence.
    """
    if drop <= 0:
        return mask
    n, height, width = mask.shape
    grid = (n, -(-height // cell), -(-width // cell))
    keep = torch.rand(grid, generator=generator, device=mask.device) >= drop
    keep = keep.repeat_interleave(cell, 1).repeat_interleave(cell, 2)[:, :height, :width]
    return torch.where(keep, mask, torch.full_like(mask, VOID))


def pixel_loss(logits, mask, reduction: str, class_weights=None) -> torch.Tensor:
    """Softmax cross-entropy per pixel, void 255 ignored; 'sum' over pixels or their 'mean'."""
    if reduction not in ("sum", "mean"):
        raise ValueError(f"loss reduction must be 'sum' or 'mean', got {reduction!r}")
    loss = F.cross_entropy(
        logits.float(), mask.long(), weight=class_weights, ignore_index=VOID, reduction="sum"
    )
    if reduction == "sum":
        return loss
    # Mean over labeled pixels; an all-void crop contributes nothing rather than nan.
    return loss / (mask != VOID).sum().clamp(min=1)


def median_frequency_weights(hist: np.ndarray, power: float = 1.0) -> list[float]:
    """Class weights (median(freq) / freq(c)) ** power from per-class pixel counts (absent
    classes: 0). power 1 is median-frequency balancing; 0.5 softens it, which keeps a dominant
    background from being weighted so low that the net stops predicting it."""
    counts = np.asarray(hist, dtype=np.float64)
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    if not present.any():
        return [1.0] * len(counts)
    median = np.median(freq[present])
    weights = np.zeros_like(freq)
    weights[present] = (median / freq[present]) ** power
    return weights.tolist()
