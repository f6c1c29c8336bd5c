"""Segmentation scores from a confusion matrix, as in the FCN paper (docs/paper.md, "Metrics").

`hist[t, p]` counts pixels of true class t predicted as p; void (255) and any label outside
[0, num_classes) are left out. Accumulate `hist` over a dataset (and over processes with
`all_reduce_confusion`), then call `scores` once: the scores are ratios of sums, not means of
per-image scores.
"""

import re
import sys

import numpy as np

# The four scores of the paper, in its order; also their MLflow metric names.
SCORE_NAMES = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
CLASS_METRIC_PREFIX = "iu_"  # per-class IU metrics: iu_<class name>
# MLflow metric names allow letters, digits, _ - . space and /; anything else in a user's
# class name becomes "_".
_NOT_IN_METRIC_NAME = re.compile(r"[^A-Za-z0-9_\-. /]")


def confusion_matrix(truth, pred, num_classes: int) -> np.ndarray:
    """`num_classes x num_classes` int64 counts; rows = truth, columns = prediction.

    `truth` and `pred` are same-shaped integer arrays (NumPy or torch, any device). Pixels whose
    truth is outside [0, num_classes) (void 255 included) are ignored, and so are predictions
    outside that range.
    """
    if tuple(truth.shape) != tuple(pred.shape):
        raise ValueError(f"truth {tuple(truth.shape)} and pred {tuple(pred.shape)} differ in shape")
    n = num_classes
    # torch is looked up, not imported: without it loaded nothing here can be a tensor, and
    # readers of metric names (compare) stay torch-free.
    torch = sys.modules.get("torch")
    if torch is not None and (isinstance(truth, torch.Tensor) or isinstance(pred, torch.Tensor)):
        # Count on the tensors' device (a GPU during training) and copy back only n^2 numbers.
        truth = torch.as_tensor(truth).reshape(-1).long()
        pred = torch.as_tensor(pred, device=truth.device).reshape(-1).long()
        keep = (truth >= 0) & (truth < n) & (pred >= 0) & (pred < n)
        counts = torch.bincount(n * truth[keep] + pred[keep], minlength=n * n)
        return counts.reshape(n, n).cpu().numpy().astype(np.int64)
    truth = np.asarray(truth).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    keep = (truth >= 0) & (truth < n) & (pred >= 0) & (pred < n)
    counts = np.bincount(n * truth[keep] + pred[keep], minlength=n * n)
    return counts.reshape(n, n).astype(np.int64)


def scores(hist) -> dict:
    """pixel_acc, mean_acc, mean_iu, fw_iu (floats) and iu (per-class array), as in docs/paper.md.

    Classes absent from both truth and prediction have IU nan and drop out of the means
    (nanmean), as in the reference `score.py`. An all-void set (`hist` all zeros) scores as
    the reference `score.py` and pytorch-fcn score it: pixel_acc, mean_acc and mean_iu are nan
    (nothing was measured) and fw_iu is 0 (an empty frequency-weighted sum), so a fw_iu curve
    logged next to theirs reads the same.
    """
    hist = np.asarray(hist, dtype=np.float64)
    diag = np.diag(hist)
    total = hist.sum()
    truth_per_class = hist.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pixel_acc = diag.sum() / total
        acc = diag / truth_per_class
        iu = diag / (truth_per_class + hist.sum(0) - diag)
        freq = truth_per_class / total
    mean_acc = np.nanmean(acc) if np.any(~np.isnan(acc)) else np.nan
    mean_iu = np.nanmean(iu) if np.any(~np.isnan(iu)) else np.nan
    present = freq > 0
    fw_iu = (freq[present] * iu[present]).sum()  # no class present: the empty sum, 0
    return {
        "pixel_acc": float(pixel_acc),
        "mean_acc": float(mean_acc),
        "mean_iu": float(mean_iu),
        "fw_iu": float(fw_iu),
        "iu": iu,
    }


def named_scores(scores: dict, class_names) -> dict:
    """Metric name -> value: the four scores and `iu_<class name>` for each class that
    occurred (a class absent from truth and prediction has no IU, so no value)."""
    out = {k: scores[k] for k in SCORE_NAMES}
    for name, value in zip(class_names, scores["iu"], strict=True):
        if not np.isnan(value):
            out[class_metric(name)] = float(value)
    return out


def class_metric(class_name) -> str:
    """The MLflow metric name of a class's IU: `iu_<name>`, characters MLflow refuses as "_"."""
    return CLASS_METRIC_PREFIX + _NOT_IN_METRIC_NAME.sub("_", str(class_name))


def all_reduce_confusion(hist):
    """Sum `hist` over all torch.distributed processes; unchanged when not initialized.

    Returns the same type as given (NumPy array or tensor). int64 so that counts over a whole
    dataset (billions of pixels) do not overflow.
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return hist
    as_numpy = not isinstance(hist, torch.Tensor)
    tensor = torch.as_tensor(np.asarray(hist) if as_numpy else hist).to(torch.int64)
    device = tensor.device
    if dist.get_backend() == "nccl":
        # NCCL reduces GPU tensors only.
        tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        tensor = tensor.cpu().clone()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy() if as_numpy else tensor.to(device)
