"""fcn.compare against a real MLflow store (a SQLite file: no server), runs logged for real."""

from __future__ import annotations

import csv
import io
import math
import shutil

import numpy as np
import pytest

pytest.importorskip("mlflow")

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from fcn import tracking  # noqa: E402
from fcn.compare import job as cmp  # noqa: E402
from fcn.compare import plots as cmp_plots  # noqa: E402
from fcn.compare import rows as cmp_rows  # noqa: E402
from fcn.compare import table as cmp_table  # noqa: E402
from fcn.config import CompareConfig, parse  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def log_run(client, experiment_id, name, model, lr, curve, status="FINISHED", classes=None,
            val_digest=None):  # fmt: skip
    """A run following the metric contract: mean_iu per evaluation, best_mean_iu, iu_<class>."""
    tags = {tracking.TAG_VAL_DIGEST: val_digest} if val_digest else {}
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    # name differs per run but is no setting; batch_size is the same everywhere: not "key"
    params = {"model": model, "lr": lr, "name": name, "batch_size": 1}
    metrics, best = [], -1.0
    for step, value in curve:
        best = max(best, value)
        values = {"train_loss": 1.0 - value, "mean_iu": value, "best_mean_iu": best,
                  "pixel_acc": 0.5 + value / 2, "fw_iu": value + 0.05}  # fmt: skip
        for i, cls in enumerate(classes or ("background", "aeroplane", "cat")):
            values[f"iu_{cls}"] = value * (1 + i) / 3
        metrics += [Metric(k, v, 0, step) for k, v in values.items()]
    client.log_batch(run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One store with five runs, built once (SQLite setup is the slow part); each test gets
    its own copy, so what one test registers or logs no other test sees."""
    root = tmp_path_factory.mktemp("store")
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    experiment_id = client.create_experiment("cmp", artifact_location=str(root / "art"))
    ids = {
        "mid": log_run(client, experiment_id, "mid", "fcn16s", 1e-4, [(10, 0.2), (20, 0.4)]),
        "best": log_run(client, experiment_id, "best", "fcn8s", 1e-5, [(10, 0.3), (20, 0.6)]),
        "low": log_run(client, experiment_id, "low", "fcn32s", 1e-3, [(10, 0.1), (20, 0.05)]),
        "crashed": log_run(client, experiment_id, "crashed", "fcn8s", 1e-2, [], status="FAILED"),
        # Higher best so far, but not finished: listed first, never promoted.
        "running": log_run(client, experiment_id, "running", "fcn8s", 1e-5, [(10, 0.9)], "RUNNING"),
    }
    return root / "mlflow.db", ids


@pytest.fixture
def store(template, tmp_path):
    database, ids = template
    shutil.copy(database, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, MlflowClient(tracking_uri=uri), ids, tmp_path


def test_table_order_settings_and_files(store):
    uri, client, ids, tmp_path = store
    out = tmp_path / "out"
    result = cmp.compare(CompareConfig(experiment="cmp", output=str(out), tracking_uri=uri, top=3))

    assert [r.name for r in result.rows] == ["running", "best", "mid", "low", "crashed"]
    assert result.rows[-1].best_mean_iu is None and result.rows[-1].status == "FAILED"
    best = result.rows[1]
    assert best.best_mean_iu == pytest.approx(0.6) and best.scores["mean_iu"] == pytest.approx(0.6)
    low = result.rows[3]
    assert low.best_mean_iu == pytest.approx(0.1)
    assert low.scores["mean_iu"] == pytest.approx(0.05) and low.scores["mean_acc"] is None
    assert result.settings == ["lr"]  # name differs but names the run; batch_size is constant

    with open(out / cmp.CSV_FILE, newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["run"] for r in table] == ["running", "best", "mid", "low", "crashed"]
    assert [r["rank"] for r in table] == ["1", "2", "3", "4", "5"]
    assert table[1]["model"] == "fcn8s" and float(table[1]["best_mean_iu"]) == pytest.approx(0.6)
    assert table[4]["best_mean_iu"] == "" and table[4]["status"] == "FAILED"
    markdown = (out / cmp.MARKDOWN_FILE).read_text()
    assert "best mean IU" in markdown and "0.6000" in markdown and markdown.count("\n") == 7
    for name in (cmp.CURVES_FILE, cmp.PER_CLASS_FILE):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
    assert result.promotion is None and result.comparison_run_id is None


def test_per_class_is_taken_at_the_best_evaluation(store):
    uri, client, ids, _ = store
    row = cmp_rows.to_row(client.get_run(ids["low"]))
    curve = tracking.metric_history(row.run_id, "mean_iu", uri)
    values = cmp_plots.per_class_at_best(row, curve, uri)
    assert values["iu_background"] == pytest.approx(0.1 / 3)  # step 10, not the later 0.05
    assert cmp_plots.class_order(row.class_metrics) == ["background", "aeroplane", "cat"]
    assert cmp_plots.class_order(["iu_zebra", "iu_cat", "iu_background"]) == [
        "background",
        "cat",
        "zebra",
    ]
    assert cmp_plots.class_order([f"iu_{i}" for i in (10, 2, 0, 1)]) == ["0", "1", "2", "10"]


def test_plot_classes_without_a_recorded_list_use_voc_colours_by_index():
    from fcn.engine.classes import voc_colormap

    cmap = voc_colormap()
    classes = cmp_plots.plot_classes([None], {"iu_cat", "iu_background", "iu_zebra"})
    assert classes.names == ("background", "cat", "zebra")
    assert classes.colors[1] == tuple(cmap[8])  # cat is VOC class 8, wherever it is plotted
    numbered = cmp_plots.plot_classes([], {"iu_0", "iu_3"})
    assert numbered.names == ("0", "3") and numbered.colors[1] == tuple(cmap[3])


def _colours(png: bytes) -> set:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    return {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}


def test_per_class_plot_uses_the_runs_class_names_and_colours(store):
    """A run that logged its class list (classes.json): its names label the bars, its colours
    fill them; a class only another run measured follows."""
    uri, client, _, tmp_path = store
    experiment_id = client.create_experiment("five", artifact_location=str(tmp_path / "art"))
    names = ("sky", "road", "car park", "tree", "person")
    colors = [[12, 200, 34], [250, 10, 10], [10, 10, 250], [240, 240, 0], [0, 240, 240]]
    first = log_run(client, experiment_id, "a", "fcn8s", 1e-4, [(5, 0.5)], classes=names)
    log_run(client, experiment_id, "b", "fcn8s", 1e-3, [(5, 0.4)], classes=(*names, "extra"))
    listed = {"num_classes": 5, "names": list(names), "colors": colors}
    tracking.log_classes(first, listed, uri)
    out = tmp_path / "out"
    cmp.compare(CompareConfig(experiment="five", output=str(out), tracking_uri=uri))

    classes = cmp_plots.plot_classes([listed, None], {f"iu_{n}" for n in (*names, "extra")})
    assert classes.names == (*names, "extra")  # metric iu_car park names class "car park"
    assert [list(c) for c in classes.colors[:5]] == colors
    found = _colours((out / cmp.PER_CLASS_FILE).read_bytes())
    assert {tuple(c) for c in colors} <= found


def test_promote_moves_champion_to_best_finished_run(store, tmp_path):
    uri, client, ids, _ = store
    client.create_registered_model("fcn-voc")
    versions = {}
    for key in ("mid", "best", "running"):
        version = client.create_model_version(
            "fcn-voc", source=str(tmp_path / key), run_id=ids[key]
        )
        versions[key] = version.version
    client.set_registered_model_alias("fcn-voc", tracking.CHAMPION, versions["mid"])

    result = cmp.compare(
        CompareConfig(experiment="cmp", output=str(tmp_path / "o"), tracking_uri=uri, promote=True)
    )
    promotion = result.promotion
    assert promotion.run_id == ids["best"] and promotion.version == str(versions["best"])
    assert promotion.previous_version == str(versions["mid"])
    assert client.get_model_version_by_alias("fcn-voc", tracking.CHAMPION).run_id == ids["best"]


def test_promote_refuses_a_run_validated_on_other_data(store, tmp_path):
    """The best run's version has a higher mean IU, but on another val set: no champion."""
    uri, client, ids, _ = store
    client.create_registered_model("fcn-voc")
    for key, digest in (("mid", "d1"), ("best", "d2")):
        client.create_model_version(
            "fcn-voc", source=str(tmp_path / key), run_id=ids[key],
            tags={tracking.TAG_VAL_DIGEST: digest},
        )  # fmt: skip
    client.set_registered_model_alias("fcn-voc", tracking.CHAMPION, "1")
    result = cmp.compare(
        CompareConfig(experiment="cmp", output=str(tmp_path / "o"), tracking_uri=uri, promote=True)
    )
    assert result.promotion is None
    assert "not comparable" in result.refusal and "d1" in result.refusal
    assert str(client.get_model_version_by_alias("fcn-voc", tracking.CHAMPION).version) == "1"


def test_table_groups_runs_by_validation_data(store):
    uri, client, _, tmp_path = store
    experiment_id = client.create_experiment("groups", artifact_location=str(tmp_path / "art"))
    for name, best, digest in (("a", 0.5, "d1"), ("b", 0.9, "d2"), ("c", 0.7, "d1")):
        log_run(client, experiment_id, name, "fcn8s", 1e-4, [(5, best)], val_digest=digest)
    result = cmp.compare(CompareConfig(experiment="groups", output=str(tmp_path / "o"),
                                       tracking_uri=uri))  # fmt: skip
    assert [r.name for r in result.rows] == ["b", "c", "a"]  # d2's group first: it holds 0.9
    assert cmp_rows.ranks(result.rows) == [1, 1, 2]
    markdown = cmp_table.to_markdown(result.rows, result.settings)
    assert "validated on 2 different val datasets" in markdown
    table = list(csv.DictReader(io.StringIO(cmp_table.to_csv(result.rows, result.settings))))
    assert [(r["run"], r["rank"], r["val_digest"]) for r in table] == [
        ("b", "1", "d2"), ("c", "1", "d1"), ("a", "2", "d1"),
    ]  # fmt: skip


def test_promote_without_registered_version_is_a_clear_error(store):
    uri, client, ids, tmp_path = store
    with pytest.raises(LookupError, match="no registered model version"):
        cmp.compare(
            CompareConfig(
                experiment="cmp", output=str(tmp_path / "o"), tracking_uri=uri, promote=True
            )
        )


def test_log_artifacts_makes_a_comparison_run_that_is_never_compared(store):
    uri, client, ids, tmp_path = store
    config = CompareConfig(
        experiment="cmp", output=str(tmp_path / "o"), tracking_uri=uri, log_artifacts=True
    )
    result = cmp.compare(config)
    logged = {a.path for a in client.list_artifacts(result.comparison_run_id, "comparison")}
    assert logged == {f"comparison/{n}" for n in result.outputs}
    again = cmp.compare(config)
    assert len(again.rows) == 5  # the comparison runs are left out


def test_unknown_experiment_names_the_ones_there(store):
    uri, *_ = store
    with pytest.raises(LookupError, match="experiments there: .*cmp"):
        cmp.compare(CompareConfig(experiment="nope", tracking_uri=uri))


def test_table_helpers_without_a_store():
    scores = {"pixel_acc": 0.9, "mean_acc": 0.7, "mean_iu": 0.5, "fw_iu": 0.6}
    rows = [
        cmp_rows.RunRow("a" * 32, "x", "fcn8s", "FINISHED", float("nan"), {}, 3725.0),
        cmp_rows.RunRow("b" * 32, "y|z", "fcn8s", "FINISHED", 0.5, scores, 59.6),
    ]
    ordered = cmp_rows.sort_rows(rows)
    assert [r.name for r in ordered] == ["y|z", "x"]  # NaN sorts as missing
    markdown = cmp_table.to_markdown(ordered, [])
    assert "y\\|z" in markdown and "1h02m" in markdown and "0m60s" not in markdown
    assert "1m00s" in markdown
    table = list(csv.DictReader(io.StringIO(cmp_table.to_csv(ordered, []))))
    assert math.isnan(float(table[1]["best_mean_iu"]))


def test_cli_flags():
    config = parse(CompareConfig, ["--experiment", "e", "--promote", "--top", "3"])
    assert config.promote and config.top == 3 and not config.log_artifacts
    with pytest.raises(ValueError, match="--experiment is required"):
        parse(CompareConfig, []).validate()
