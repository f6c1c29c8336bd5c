"""fcn.metrics against a straightforward NumPy reference, and its torch.distributed reduction."""

import numpy as np
import pytest
import torch
from helpers_gloo import spawn

from fcn.engine.metrics import all_reduce_confusion, confusion_matrix, scores

NUM_CLASSES = 6


def reference_confusion(truth, pred, num_classes):
    hist = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(truth.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if 0 <= t < num_classes and 0 <= p < num_classes:
            hist[t, p] += 1
    return hist


def reference_scores(hist):
    """The formulas of docs/paper.md, one class at a time."""
    n = hist.shape[0]
    total = hist.sum()
    accs, ius, fw = [], [], 0.0
    for c in range(n):
        truth_c = hist[c, :].sum()
        pred_c = hist[:, c].sum()
        tp = hist[c, c]
        accs.append(tp / truth_c if truth_c else np.nan)
        union = truth_c + pred_c - tp
        ius.append(tp / union if union else np.nan)
        if truth_c:
            fw += truth_c / total * ius[-1]
    accs, ius = np.array(accs), np.array(ius)
    return {
        "pixel_acc": np.trace(hist) / total,
        "mean_acc": np.nanmean(accs),
        "mean_iu": np.nanmean(ius),
        "fw_iu": fw,
        "iu": ius,
    }


def random_labels(seed, shape=(3, 17, 23)):
    """Truth with void 255; class 4 nowhere; class 5 in truth but never predicted."""
    rng = np.random.default_rng(seed)
    truth = rng.choice([0, 1, 2, 3, 5, 255], size=shape, p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    pred = np.where(rng.random(shape) < 0.6, truth, rng.integers(0, 4, size=shape))
    pred = np.where((pred == 255) | (pred == 5), 0, pred)
    return truth.astype(np.uint8), pred.astype(np.int64)


def test_confusion_matches_reference_numpy_and_torch():
    truth, pred = random_labels(0)
    expected = reference_confusion(truth, pred, NUM_CLASSES)
    assert expected.sum() < truth.size  # void pixels were present and left out
    np.testing.assert_array_equal(confusion_matrix(truth, pred, NUM_CLASSES), expected)
    from_torch = confusion_matrix(torch.from_numpy(truth), torch.from_numpy(pred), NUM_CLASSES)
    np.testing.assert_array_equal(from_torch, expected)
    assert from_torch.dtype == np.int64


def test_labels_outside_range_are_ignored():
    truth = np.array([0, 1, 7, 255, -1, 2])
    pred = np.array([0, 1, 1, 1, 1, 9])
    hist = confusion_matrix(truth, pred, 3)
    assert hist.sum() == 2 and hist[0, 0] == 1 and hist[1, 1] == 1


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), 2)


def test_scores_match_reference_with_absent_classes():
    truth, pred = random_labels(1)
    hist = confusion_matrix(truth, pred, NUM_CLASSES)
    got, want = scores(hist), reference_scores(hist)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    np.testing.assert_allclose(got["iu"], want["iu"], rtol=1e-12)
    assert np.isnan(got["iu"][4])  # absent from truth and prediction: out of the means
    assert got["iu"][5] == 0.0  # present in truth, never predicted: counts as 0


def test_perfect_prediction_scores_one():
    truth = np.array([[0, 1], [2, 255]])
    s = scores(confusion_matrix(truth, truth, 3))
    assert s["pixel_acc"] == s["mean_acc"] == s["mean_iu"] == s["fw_iu"] == 1.0


def test_all_void_set_scores_as_the_reference():
    """Caffe's score.py and pytorch-fcn: fw IU 0 on an empty histogram, the other scores nan."""
    truth = np.full((2, 3), 255)
    s = scores(confusion_matrix(truth, np.zeros((2, 3), dtype=np.int64), 3))
    assert s["fw_iu"] == 0.0
    assert np.isnan(s["pixel_acc"]) and np.isnan(s["mean_acc"]) and np.isnan(s["mean_iu"])
    assert np.isnan(s["iu"]).all()


def test_all_reduce_is_identity_without_process_group():
    hist = np.arange(4).reshape(2, 2)
    assert all_reduce_confusion(hist) is hist


def _reduce_worker(rank, world_size, result_file):
    truth, pred = random_labels(0)
    # Each process scores its own images, as in distributed evaluation.
    hist = confusion_matrix(truth[rank::world_size], pred[rank::world_size], NUM_CLASSES)
    reduced = all_reduce_confusion(hist)
    tensor = all_reduce_confusion(torch.from_numpy(hist))
    assert isinstance(reduced, np.ndarray) and isinstance(tensor, torch.Tensor)
    np.testing.assert_array_equal(tensor.numpy(), reduced)
    if rank == 0:
        np.save(result_file, reduced)


def test_all_reduce_over_two_gloo_processes_equals_single_process(tmp_path):
    result_file = tmp_path / "hist.npy"
    spawn(_reduce_worker, 2, tmp_path, str(result_file))
    truth, pred = random_labels(0)
    single = confusion_matrix(truth, pred, NUM_CLASSES)
    np.testing.assert_array_equal(np.load(result_file), single)
    assert scores(np.load(result_file))["mean_iu"] == scores(single)["mean_iu"]
