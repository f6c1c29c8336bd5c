"""One training step, without Ray or MLflow: what Ray Train's workers and the benchmarks run.

Plain PyTorch (imports torch and `fcn.optim` only), so it runs wherever torch does: on CPU in
one process without a process group, under Ray Train (gloo or NCCL), or from a script in a
single-process NCCL group on a GPU machine that has no Ray. Use:

    model, bare = prepare(model, device, channels_last=True, ddp=True)
    optimizer = optim.build_optimizer(bare, recipe)
    scaler = make_scaler(device, amp)
    loss = train_step(model, optimizer, [(image, mask), ...], recipe, scaler=scaler, amp=amp)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from fcn.engine import optim

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def world_size() -> int:
    """Processes in the default process group; 1 when none is initialised."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def prepare(
    model: nn.Module, device: torch.device, channels_last: bool = False, ddp: bool = False
) -> tuple[nn.Module, nn.Module]:
    """(model to train, bare model): moved to `device`, channels_last if asked, and wrapped in
    DistributedDataParallel when `ddp` (needs an initialised process group; world size 1 is
    fine). The bare model is what to save, evaluate and give the optimizer."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not ddp:
        return model, model
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("ddp=True needs an initialised torch.distributed process group")
    ids = None
    if device.type == "cuda":
        ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # Gradients as views into DDP's buckets: one copy of the gradients, not two (~0.5 GB
    # for FCN-VGG16).
    wrapped = nn.parallel.DistributedDataParallel(
        model, device_ids=ids, gradient_as_bucket_view=True
    )
    return wrapped, model


def amp_context(device: torch.device, amp: str):
    """Autocast for `amp` 'bf16' or 'fp16' on CUDA; a no-op for 'none' and on CPU (where
    autocast would only slow the convolutions down)."""
    enabled = device.type == "cuda" and amp != "none"
    return torch.autocast(device.type, dtype=AMP_DTYPES.get(amp, torch.bfloat16), enabled=enabled)


def make_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 on CUDA (fp16 gradients underflow without it); None otherwise."""
    if device.type == "cuda" and amp == "fp16":
        return torch.amp.GradScaler("cuda")
    return None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    recipe: optim.Recipe,
    *,
    class_weights: torch.Tensor | None = None,
    scaler: torch.amp.GradScaler | None = None,
    amp: str = "none",
    channels_last: bool = False,
    loss_sample: float = 0.0,
    stride: int = 32,
) -> float:
    """One optimizer step over this worker's `micro_batches` of (image N×3×H×W float, mask
    N×H×W): gradients accumulated (DDP synchronises on the last only), `recipe.loss`
    normalised so the update is the same whatever the number of workers and micro-batches.

    Returns the step's loss averaged over workers (the same number on every worker).
    `loss_sample` voids each stride×stride cell of the mask with that probability (the
    paper's patch sampling; `stride` = the model's `coarse_stride`).
    """
    device = next(model.parameters()).device
    world, accumulate = world_size(), len(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for k, (image, mask) in enumerate(micro_batches):
        image, mask = image.to(device, non_blocking=True), mask.to(device).long()
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        mask = optim.sample_loss_cells(mask, loss_sample, cell=stride)
        last = k == accumulate - 1
        with (
            contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync(),
            amp_context(device, amp),
        ):
            loss = optim.pixel_loss(model(image), mask, recipe.loss, class_weights)
            # DDP averages gradients over workers: a mean stays the global mean, a sum is
            # scaled back up to the sum over every worker's images.
            loss = loss / accumulate if recipe.loss == "mean" else loss * world
        (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach() if recipe.loss == "mean" else loss.detach() / world
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if world > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        total /= world
    return float(total)
