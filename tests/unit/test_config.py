from dataclasses import dataclass

import pytest

from fcn.config import from_dict, parse, required, setting, to_dict


@dataclass(frozen=True)
class Example:
    data: str = required("where the data is")
    iterations: int = setting(100, "steps")
    lr: float | None = setting(None, "learning rate")
    flip: bool = setting(False, "random flips")
    scales: tuple[float, ...] = setting((1.0,), "scales")
    mode: str = setting("a", "mode", choices=("a", "b"))


def test_cli_is_generated_from_the_fields():
    config = parse(Example, ["--data", "s3://b/x", "--iterations", "7", "--lr", "1e-4", "--flip"])
    assert config == Example(data="s3://b/x", iterations=7, lr=1e-4, flip=True)


def test_defaults_and_repeated_tuple_flags():
    assert parse(Example, ["--data", "d"]).scales == (1.0,)
    assert parse(Example, ["--data", "d", "--scales", "0.5", "1"]).scales == (0.5, 1.0)
    assert parse(Example, ["--data", "d", "--scales", "0.5", "--scales", "2"]).scales == (0.5, 2.0)


@pytest.mark.parametrize(
    "argv", [[], ["--data", "d", "--mode", "c"], ["--data", "d", "--iterations", "x"]]
)
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(Example, argv)
    assert exit_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_dict_round_trip_ignores_unknown_keys():
    config = Example(data="d", scales=(0.5, 1.0))
    saved = {**to_dict(config), "from_a_newer_version": 1}
    assert from_dict(Example, saved) == config


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        parse(Example, ["--help"])
    shown = capsys.readouterr().out
    assert "(default: (1.0,))" in shown and "(default: 100)" in shown


def test_help_groups_flags_and_ends_with_the_examples(capsys):
    @dataclass(frozen=True)
    class Grouped:
        data: str = required("where the data is")
        lr: float | None = setting(None, "learning rate")
        data_thing: int = setting(1, "a data knob", group="data")
        odd: int = setting(2, "in no group")

    with pytest.raises(SystemExit):
        parse(Grouped, ["--help"], epilog="examples:\n  python jobs/x.py --data d")
    shown = capsys.readouterr().out.split("\noptions:")[1]  # after the usage line
    data, optimisation = shown.index("\ndata:"), shown.index("\noptimisation:")
    assert data < shown.index("--data-thing") < optimisation < shown.index("--lr LR")
    assert shown.index("--odd") < data  # ungrouped flags stay under "options"
    assert shown.rstrip().endswith("python jobs/x.py --data d")


def test_train_splits_one_or_several():
    from fcn.config import TrainConfig

    assert parse(TrainConfig, ["--data", "d"]).train_split == ("train",)
    assert parse(TrainConfig, ["--data", "d", "--train-split", "trainaug"]).train_split == (
        "trainaug",
    )
    both = ("train", "labeled-2026-11-27/default")
    assert parse(TrainConfig, ["--data", "d", "--train-split", *both]).train_split == both
    repeated = ["--train-split", both[0], "--train-split", both[1]]
    assert parse(TrainConfig, ["--data", "d", *repeated]).train_split == both
    assert TrainConfig(data="d", train_split="val").train_split == ("val",)  # one name, as before
    with pytest.raises(ValueError, match="--train-split needs one or more distinct splits"):
        TrainConfig(data="d", train_split=("train", "train")).validate()


def test_every_job_validates_one_way():
    """One convention (fcn.config.Settings): construction never refuses a value (a config.json
    saved earlier always rebuilds), `validate()` returns the settings or names the flag."""
    from fcn.config import (
        CompareConfig,
        EvaluateConfig,
        ImportConfig,
        IngestConfig,
        SegmentConfig,
        Settings,
        TrainConfig,
    )

    bad = {
        IngestConfig: {"output": "o", "rows_per_shard": 0},
        TrainConfig: {"data": "d", "workers": 0},
        EvaluateConfig: {"data": "d", "model": "m", "workers": -1},
        SegmentConfig: {"input": "i", "output": "o", "model": "m", "batch_size": 0},
    }
    for cls, values in bad.items():
        config = cls(**values)
        with pytest.raises(ValueError, match=r"^--(rows-per-shard|workers|batch-size)"):
            config.validate()
        good = cls(**{k: v for k, v in values.items() if isinstance(v, str)})
        assert good.validate() is good
    for cls in (CompareConfig, ImportConfig):
        assert issubclass(cls, Settings)
    assert CompareConfig(experiment="e").validate() == CompareConfig(experiment="e")
