"""Training pieces without Ray: recipes, parameter groups, loss, initialization (staged
32s -> 16s -> 8s), and distributed evaluation equal to single-process evaluation."""

import dataclasses
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from helpers_data import write_split
from torch import nn

from fcn import tracking
from fcn.config import TrainConfig
from fcn.data import transforms
from fcn.engine import checkpoint, metrics, optim
from fcn.engine.classes import ClassList
from fcn.engine.models import build_model, preprocess
from fcn.training.driver import resolve
from fcn.training.init import build_initial_model, initial_preprocessing


def config(**kw):
    return TrainConfig(data="unused", **kw)


def test_presets_keep_the_published_recipes():
    paper = optim.recipe(config(preset="paper"))
    assert (paper.optimizer, paper.lr, paper.momentum, paper.batch_size) == ("sgd", 1e-4, 0.9, 20)
    assert paper.weight_decay == 5e-4
    heavy = [optim.recipe(config(preset="heavy", model=m)) for m in ("fcn32s", "fcn16s", "fcn8s")]
    assert [r.lr for r in heavy] == [1e-10, 1e-12, 1e-14]
    assert {(r.momentum, r.batch_size, r.loss) for r in heavy} == {(0.99, 1, "sum")}
    fast = optim.recipe(config(preset="fast", lr=3e-4, batch_size=4, score_lr_mult=10.0))
    assert (fast.optimizer, fast.lr, fast.batch_size) == ("adam", 3e-4, 4)
    assert paper.score_lr_mult == 1.0 and fast.score_lr_mult == 10.0


def test_heavy_alexnet_is_the_reference_alexnet_solver_and_googlenet_has_none():
    assert optim.recipe(config(preset="heavy", model="fcn-alexnet")) == optim.PAPER
    with pytest.raises(ValueError, match="no solver for fcn-googlenet"):
        optim.recipe(config(preset="heavy", model="fcn-googlenet"))


@pytest.mark.parametrize(
    "bad", [{"iterations": 0}, {"eval_every": 0}, {"workers": 0}, {"num_classes": 256},
            {"loss_sample": 1.0}, {"crop_size": 0}],
)  # fmt: skip
def test_validate_names_the_bad_setting(bad):
    name = next(iter(bad)).replace("_", "-")
    with pytest.raises(ValueError, match=f"--{name}"):
        config(**bad).validate()
    assert config().validate() == config()


def test_biases_get_twice_the_lr_and_no_decay():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1))
    net[0].weight.requires_grad = False
    groups = optim.parameter_groups(net, 0.1, 5e-4)
    assert groups[0] == {"params": [net[0].bias, net[1].bias], "lr": 0.2, "weight_decay": 0.0}
    assert groups[1] == {"params": [net[1].weight], "lr": 0.1, "weight_decay": 5e-4}
    model = build_model("fcn32s", 3)
    groups = optim.parameter_groups(model, 1e-4, 0.0, score_lr_mult=10)
    score = [g for g in groups if any(p is model.score_fr.weight for p in g["params"])]
    assert score[0]["lr"] == pytest.approx(1e-3) and len(score[0]["params"]) == 1


def test_loss_ignores_void_and_sums_or_averages():
    logits = torch.zeros(1, 3, 2, 2)
    mask = torch.tensor([[[0, 1], [255, 2]]])
    total = optim.pixel_loss(logits, mask, "sum")
    assert total.item() == pytest.approx(3 * np.log(3), rel=1e-5)
    assert optim.pixel_loss(logits, mask, "mean").item() == pytest.approx(np.log(3), rel=1e-5)
    everything_void = torch.full((1, 2, 2), 255)
    assert optim.pixel_loss(logits, everything_void, "mean").item() == 0.0


def test_loss_sampling_drops_whole_cells():
    mask = torch.zeros(2, 64, 70, dtype=torch.long)
    sampled = optim.sample_loss_cells(mask, 0.5, 32, torch.Generator().manual_seed(0))
    dropped = sampled == 255
    assert 0 < dropped.float().mean() < 1
    for n in range(2):
        for i in range(0, 64, 32):
            for j in range(0, 70, 32):
                cell = dropped[n, i : i + 32, j : j + 32]
                assert cell.all() or not cell.any()
    assert optim.sample_loss_cells(mask, 0.0, 32) is mask


def test_median_frequency_weights():
    weights = optim.median_frequency_weights(np.array([60, 30, 10, 0]))
    assert weights[1] == pytest.approx(1.0) and weights[3] == 0.0
    assert weights[2] > weights[1] > weights[0]
    softened = optim.median_frequency_weights(np.array([60, 30, 10, 0]), power=0.5)
    assert softened == pytest.approx([w**0.5 for w in weights])


def test_classifier_only_freezes_the_backbone():
    model = build_model("fcn32s", 3)
    optim.freeze_all_but_classifier(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"score_fr.weight", "score_fr.bias"}


def test_staged_training_32s_16s_8s_from_checkpoints(tmp_path):
    torch.manual_seed(0)
    fcn32s = build_model("fcn32s", 3)
    with torch.no_grad():
        fcn32s.score_fr.weight.normal_(0, 0.01)  # as if trained
    spec = preprocess.CAFFE
    saved = {"model": "fcn32s", "num_classes": 3, "preprocessing": spec}
    checkpoint.save(fcn32s.state_dict(), saved, str(tmp_path / "s32"))
    cfg16 = config(model="fcn16s", num_classes=3, init=str(tmp_path / "s32"))
    assert initial_preprocessing(cfg16) == spec
    fcn16s = build_initial_model(cfg16)
    assert torch.equal(fcn16s.score_fr.weight, fcn32s.score_fr.weight)
    assert torch.equal(fcn16s.conv5_3.weight, fcn32s.conv5_3.weight)
    assert not fcn16s.score_pool4.weight.any()  # the new skip starts at zero
    checkpoint.save(fcn16s.state_dict(), {**saved, "model": "fcn16s"}, str(tmp_path / "s16"))
    fcn8s = build_initial_model(config(model="fcn8s", num_classes=3, init=str(tmp_path / "s16")))
    assert torch.equal(fcn8s.score_fr.weight, fcn32s.score_fr.weight)
    assert hasattr(fcn8s, "score_pool3") and not fcn8s.score_pool3.weight.any()
    with pytest.raises(ValueError, match="num_classes"):
        build_initial_model(config(model="fcn16s", num_classes=5, init=str(tmp_path / "s32")))


def test_staged_training_keeps_the_width_of_the_previous_stage(tmp_path):
    slim = build_model("fcn32s", 3, width=0.25)
    saved = {"model": "fcn32s", "num_classes": 3, "width": 0.25, "preprocessing": preprocess.CAFFE}
    checkpoint.save(slim.state_dict(), saved, str(tmp_path / "s32"))
    fcn16s = build_initial_model(config(model="fcn16s", num_classes=3, init=str(tmp_path / "s32")))
    assert fcn16s.width == 0.25 and torch.equal(fcn16s.conv5_3.weight, slim.conv5_3.weight)
    with pytest.raises(ValueError, match="width"):  # an explicit other width cannot transplant
        build_initial_model(
            config(model="fcn16s", num_classes=3, init=str(tmp_path / "s32"), width=0.5)
        )


def test_from_scratch_uses_torchvision_normalization():
    assert initial_preprocessing(config())["name"] == "torchvision"


def test_recipe_rejects_nonsense():
    with pytest.raises(ValueError):
        optim.recipe(dataclasses.replace(config(), lr=-1.0))


@pytest.mark.parametrize("route", ["driver", "ray-data"])
def test_cached_training_splits_still_get_new_crops_every_epoch(
    tmp_path, local_ray, monkeypatch, route
):
    """--cache-reads keeps the encoded rows, not the transformed ones: each pass over the
    dataset (an epoch) crops anew, and every image of every train split is in every epoch,
    whether the driver read the small split (`driver`) or Ray Data's read did (`ray-data`,
    splits over DRIVER_READ_BYTES); both give the same images."""
    from fcn.training import dataset as training_data

    if route == "ray-data":
        monkeypatch.setattr(training_data, "DRIVER_READ_BYTES", 0)
    write_split(str(tmp_path), "train", 3, size=(48, 48), seed=0)
    write_split(str(tmp_path / "labeled"), "default", 1, size=(48, 48), seed=1, files=1)
    splits = ("train", "labeled/default")
    cfg = config(crop_size=24, cache_reads=True, train_split=splits)
    cfg = dataclasses.replace(cfg, data=str(tmp_path))
    dataset = training_data.train_dataset(cfg, preprocess.TORCHVISION)
    epochs = [
        [b["image"] for b in dataset.iter_batches(batch_size=None, batch_format="numpy")]
        for _ in range(2)
    ]
    first, second = (np.concatenate(e) for e in epochs)
    assert first.shape == second.shape == (4, 3, 24, 24)
    # Compared as sets (order-free): the same crops in another order would not count.
    assert sorted(x.tobytes() for x in first) != sorted(x.tobytes() for x in second)
    whole = dataclasses.replace(cfg, crop_size=None)  # no crop, no flip: the images themselves
    rows = training_data.train_dataset(whole, preprocess.TORCHVISION).take_all()
    transform = transforms.TrainTransform(preprocess.TORCHVISION)
    expected = sorted(  # the split's images as the transform reads them, straight from Parquet
        transform.one(r["image"], r["mask"])[0].tobytes()
        for split in splits
        for r in pq.read_table(tmp_path / split).to_pylist()
    )
    assert sorted(r["image"].tobytes() for r in rows) == expected


def test_small_splits_are_shared_out_to_the_workers_without_a_pipeline(tmp_path, local_ray):
    """--loader worker (auto for a small cached split): the driver reads the labeled rows once;
    each worker takes an equal share, disjoint from the others' in every epoch, in a new
    order with new crops every epoch; the shares hold the split's own images."""
    from fcn.training import dataset as training_data

    write_split(str(tmp_path), "train", 5, size=(48, 48), seed=0)
    cfg = dataclasses.replace(config(crop_size=None, cache_reads=True), data=str(tmp_path))
    assert isinstance(training_data.train_source(cfg, preprocess.TORCHVISION),
                      training_data.WorkerRows)  # fmt: skip
    forced = dataclasses.replace(cfg, loader="ray-data")
    assert not isinstance(training_data.train_source(forced, preprocess.TORCHVISION),
                          training_data.WorkerRows)  # fmt: skip
    rows = training_data.train_source(dataclasses.replace(cfg, loader="worker"),
                                      preprocess.TORCHVISION)  # fmt: skip
    assert rows.rows == 5

    def epochs(transform, count=2):
        shards = [rows.shard(rank, 2, transform, seed=0) for rank in range(2)]
        return [[[b["image"] for b in s.iter_torch_batches(batch_size=1)] for s in shards]
                for _ in range(count)]  # fmt: skip

    whole = transforms.TrainTransform(preprocess.TORCHVISION)  # no crop: the images themselves
    split = {whole.one(r["image"], r["mask"])[0].tobytes()
             for r in pq.read_table(tmp_path / "train").to_pylist()}  # fmt: skip
    orders = []
    for shares in epochs(whole, 3):
        assert [len(s) for s in shares] == [2, 2]  # 5 rows, 2 workers: 2 each, one left out
        seen = [x.numpy()[0].tobytes() for share in shares for x in share]
        assert len(set(seen)) == 4 and set(seen) <= split
        assert shares[0][0].dtype == torch.float32 and shares[0][0].shape == (1, 3, 48, 48)
        orders.append(seen)
    assert len({tuple(o) for o in orders}) > 1  # a new order (and a new row left out)
    cropped = epochs(transforms.TrainTransform(preprocess.TORCHVISION, 24, flip=True))
    first, second = ([x.numpy().tobytes() for share in e for x in share] for e in cropped)
    assert sorted(first) != sorted(second)  # new crops every epoch


# --- class lists: data -> config -> checkpoint, metric names, panels ------------------------

TINY = ClassList.from_names(["sky", "cat", "dog"], [(0, 0, 0), (10, 200, 30), (250, 5, 90)])


def test_several_train_splits_are_checked_counted_and_logged_together(tmp_path):
    from fcn.training.dataset import class_distribution
    from fcn.training.driver import validate

    data = _dataset_with_classes(tmp_path / "data", TINY)
    write_split(data, "train", 2, size=(24, 24), classes=(1,), seed=0)
    write_split(data, "val", 1, size=(24, 24), classes=(1,), seed=1, files=1)
    labeled = _dataset_with_classes(tmp_path / "data" / "labeled-1", TINY)
    write_split(labeled, "default", 1, size=(24, 24), classes=(2,), seed=2, files=1)
    cfg = TrainConfig(data=data, workers=3, train_split=("train", "labeled-1/default"))
    resolved = validate(cfg).config  # 3 rows over both splits: one image for each of 3 workers
    with pytest.raises(ValueError, match="train labeled-1/default of .* holds 3 rows"):
        validate(dataclasses.replace(cfg, workers=4))
    found = class_distribution(resolved)
    masks = [m for split in cfg.train_split for m in _masks(data, split)]
    assert found.images == 3 and found.pixels.sum() == sum(int((m < 3).sum()) for m in masks)
    assert found.image_counts.tolist() == [3, 2, 1]  # dog only in the labeled split
    _dataset_with_classes(labeled, ClassList.from_names(["sky", "dog", "cat"]))
    with pytest.raises(ValueError, match="'labeled-1/default' was ingested with classes sky, dog"):
        validate(cfg)


def _masks(data, split):
    import pyarrow.parquet as pq

    from fcn.engine.images import decode_mask

    return [
        decode_mask(m) for m in pq.read_table(os.path.join(data, split)).column("mask").to_pylist()
    ]


def test_each_train_split_is_a_train_input_of_the_run(tmp_path):
    """Train logs its splits so (fcn.training.driver.run): one input per split, context "train"."""
    write_split(str(tmp_path), "train", 1, size=(8, 8), files=1)
    write_split(str(tmp_path / "labeled"), "default", 1, size=(8, 8), seed=1, files=1)
    write_split(str(tmp_path), "val", 1, size=(8, 8), seed=2, files=1)
    splits = [str(tmp_path / "train"), str(tmp_path / "labeled" / "default")]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = tracking.start_run("splits", "two", uri=uri)
    val = str(tmp_path / "val")
    digests = tracking.log_split_inputs(run_id, {"train": splits, "val": val}, uri=uri)
    run = tracking.client(uri).get_run(run_id)
    contexts = [
        (next(t.value for t in i.tags if t.key == tracking.DATASET_CONTEXT), i.dataset.digest)
        for i in run.inputs.dataset_inputs
    ]
    own = [tracking.dataset_digest(s) for s in splits]
    expected = [("train", own[0]), ("train", own[1]), ("val", tracking.dataset_digest(val))]
    assert sorted(contexts) == sorted(expected)
    assert digests["train"] not in own and run.data.tags["train_digest"] == digests["train"]


def _dataset_with_classes(root, classes):
    from fcn.data.contract import SUCCESS

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, SUCCESS), "w") as f:
        json.dump({"classes": classes.to_dict()}, f)
    return str(root)


def test_the_class_list_comes_from_the_dataset(tmp_path):
    data = _dataset_with_classes(tmp_path / "data", TINY)
    resolved, classes, _ = resolve(TrainConfig(data=data))
    assert classes == TINY and resolved.num_classes == 3
    assert resolve(TrainConfig(data=data, num_classes=3))[1] == TINY
    with pytest.raises(ValueError, match="--num-classes 21 disagrees .* 3 classes"):
        resolve(TrainConfig(data=data, num_classes=21))


def test_data_without_a_class_list_gets_voc_or_numbered_classes(tmp_path):
    assert resolve(TrainConfig(data=str(tmp_path)))[1].names[15] == "person"
    resolved, classes, _ = resolve(TrainConfig(data=str(tmp_path), num_classes=3))
    assert classes.names == ("0", "1", "2") and resolved.num_classes == 3


def test_checkpoint_metrics_and_panels_use_the_data_classes(tmp_path, monkeypatch):
    from PIL import Image

    from fcn.training.context import RunContext
    from fcn.training.loop import _checkpoint_dir, _log_validation

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)  # artifacts of a local store land under here
    data = _dataset_with_classes(tmp_path / "data", TINY)
    cfg, classes, recipe = resolve(TrainConfig(data=data, model="fcn32s", width=0.25))
    run_id = tracking.start_run("classes", "tiny", uri=uri)
    recorded = {"pixel_counts": [5, 4, 0], "image_counts": [2, 1, 0], "images": 2}
    run = RunContext(run_id, uri, str(tmp_path), preprocess.TORCHVISION, classes, None,
                     class_distribution=recorded)  # fmt: skip
    model = build_model("fcn32s", cfg.num_classes, width=0.25)
    directory = _checkpoint_dir(model, optim.build_optimizer(model, recipe), None, cfg, recipe,
                                run, {"iteration": 1})  # fmt: skip
    assert checkpoint.load_config(directory).classes == TINY
    # The training distribution travels with the checkpoint, as segment's drift reference.
    assert checkpoint.check(directory).class_distribution == recorded
    broken = {
        **checkpoint.load_config(directory).to_dict(),
        "class_distribution": {"pixel_counts": [1]},
    }
    with pytest.raises(checkpoint.ContractError, match="'class_distribution' .* for 3 classes"):
        checkpoint.CheckpointConfig.from_dict(broken, directory)

    hist = np.array([[5, 0, 0], [0, 4, 0], [0, 0, 0]])  # dog absent: no IU, no metric
    image = np.zeros((2, 2, 3), np.uint8)
    truth, pred = np.array([[0, 1], [1, 255]]), np.array([[0, 1], [2, 2]])
    logger = tracking.RunLogger(run_id, uri)
    _log_validation(
        logger, run, 5, metrics.scores(hist), [("a", image, truth, pred)], {"extra": 1.0}
    )
    logged = tracking.client(uri).get_run(run_id).data.metrics
    assert {"iu_sky", "iu_cat", "mean_iu", "extra"} <= set(logged) and "iu_dog" not in logged
    # The panel is the image series `val/<image id>` at the iteration (a step slider).
    panel_dir = tracking.client(uri).download_artifacts(run_id, "images", str(tmp_path))
    (name,) = [n for n in os.listdir(panel_dir) if n.endswith(".png")]
    assert name.startswith("val~a+step+5+")
    colors = {
        tuple(c) for c in np.asarray(Image.open(os.path.join(panel_dir, name))).reshape(-1, 3)
    }
    assert {(10, 200, 30), (250, 5, 90)} <= colors  # cat in truth, dog predicted
