"""The champion history on a local sqlite MLflow store: every mover (train, compare --promote,
import_model --champion, rollback) records its move once; who was champion at any past time;
rollback (to the previous champion, refused across validation data unless --force); the
history read back with plain MLflow; explain of a mask from a nightly state."""

import importlib.util
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_tracking import tiny_checkpoint

from fcn import tracking
from fcn.compare import champion as cmp_champion
from fcn.compare import promotion
from fcn.compare.rows import RunRow
from fcn.config import CompareConfig, ExplainConfig, parse
from fcn.nightly import explain, plan, schema

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        yield uri


def _job(name):
    spec = importlib.util.spec_from_file_location(name, REPO / f"jobs/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _version(model, digest=None, mean_iu=None) -> str:
    """A version without a logged model (the registry rule reads only its tags)."""
    client = tracking.client()
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    tags = {"val_digest": digest, "mean_iu": mean_iu}
    run_id = tracking.start_run("hist", f"{model}-run")
    tracking.end_run(run_id)
    made = client.create_model_version(model, source="/nowhere", run_id=run_id,
                                       tags={k: v for k, v in tags.items() if v})  # fmt: skip
    return str(made.version)


def _trained(tmp_path, name, score, model):
    run_id = tracking.start_run("hist", name)
    tracking.client().set_tag(run_id, tracking.TAG_VAL_DIGEST, "d1")
    registered = tracking.register_checkpoint(run_id, tiny_checkpoint(tmp_path / name), model,
                                              score)  # fmt: skip
    tracking.end_run(run_id)
    return run_id, registered


def test_every_mover_records_its_move_once(store, tmp_path):
    run1, (v1, _) = _trained(tmp_path, "a", 0.5, "movers")
    run2, (v2, _) = _trained(tmp_path, "b", 0.7, "movers")
    _trained(tmp_path, "c", 0.6, "movers")  # not better: no move, no record
    row = RunRow(run1, "a", "fcn32s", "FINISHED", 0.9, {}, 1.0)
    assert promotion.promote([row], "movers").version == v1  # compare --promote
    assert tracking.promote("movers", v1).is_champion  # already champion: no second record
    moves = tracking.champion_history("movers")
    assert [(m.from_version, m.to_version, m.job) for m in moves] == [
        (None, v1, "train"), (v1, v2, "train"), (v2, v1, "compare --promote"),
    ]  # fmt: skip
    assert moves[0].reason == "no champion yet" and moves[0].source_run_id == run1
    assert "beats champion version 1" in moves[1].reason
    assert (moves[1].from_mean_iu, moves[1].to_mean_iu) == (0.5, 0.7)
    assert moves[1].val_digest == moves[1].from_val_digest == "d1"
    assert "best finished run a" in moves[2].reason and not moves[2].forced
    assert [m.time for m in moves] == sorted(m.time for m in moves)

    # import_model --champion: the first champion of a fresh model
    weights = tiny_checkpoint(tmp_path / "imported-ckpt")
    saved = {**json.loads((Path(weights) / "config.json").read_text()),
             "weights_source": "/w/fcn32s.pth", "weights_format": "pytorch-fcn",
             "weights_sha256": "ab" * 32}  # fmt: skip
    version, decision = tracking.register_imported(weights, saved, "movers-import", "imp", True)
    assert decision.is_champion
    (move,) = tracking.champion_history("movers-import")
    assert (move.job, move.to_version, move.from_version) == ("import_model --champion", version,
                                                              None)  # fmt: skip
    assert "fcn32s.pth" in move.reason


def test_who_was_champion_at_any_time_and_rollback_to_the_previous(store):
    v1, v2 = _version("timed", "d1", "0.5"), _version("timed", "d1", "0.6")
    before = time.time() - 1
    tracking.promote("timed", v1, job="train")
    time.sleep(0.01)
    tracking.promote("timed", v2)
    time.sleep(0.01)
    decision = tracking.rollback("timed", "v2 paints roads as sky")
    assert (decision.version, decision.previous, decision.refusal) == (v1, v2, None)
    assert str(tracking.champion_version("timed").version) == v1
    moves = tracking.champion_history("timed")
    assert [m.to_version for m in moves] == [v1, v2, v1]
    assert moves[-1].job == "compare --rollback" and moves[-1].reason == "v2 paints roads as sky"
    assert tracking.champion_at("timed", before) is None
    for move in moves:
        assert tracking.champion_at("timed", move.time).record_run_id == move.record_run_id
        assert tracking.champion_at("timed", move.time + 0.001).to_version == move.to_version
    assert tracking.promotion_of("timed", v1, time.time()).job == "compare --rollback"
    assert tracking.retired_versions("timed") == {v2}
    # the previous champion of v1 (made by the rollback) is v2: a second rollback undoes it
    assert tracking.rollback("timed", "undo").version == v2


def test_rollback_across_validation_data_is_refused_unless_forced(store, capsys):
    v1, v2 = _version("guarded", "d1", "0.5"), _version("guarded", "d2", "0.9")
    tracking.promote("guarded", v1)
    job = _job("compare")
    args = ["--rollback", "--registered-model", "guarded", "--to", v2, "--reason", "why"]
    assert job.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not rolling back") and "not comparable" in err
    assert err.count("\n") == 1
    assert str(tracking.champion_version("guarded").version) == v1
    assert len(tracking.champion_history("guarded")) == 1
    assert job.main([*args, "--force"]) == 0
    assert "rolled back from 1 (forced: " in capsys.readouterr().out
    move = tracking.champion_history("guarded")[-1]
    assert move.forced and "not comparable" in move.overridden
    assert (move.val_digest, move.from_val_digest) == ("d2", "d1")

    assert job.main(["--history", "--registered-model", "guarded"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 20")]
    assert [r.split("|")[3].strip() for r in rows] == [v1, v2]
    assert "d1 -> d2" in rows[1] and "| yes |" in rows[1]
    # the first champion has no predecessor: a default rollback says so
    tracking.client().set_registered_model_alias("guarded", "champion", v1)  # by hand
    found = cmp_champion.history(CompareConfig(history=True, registered_model="guarded"))
    assert found.unrecorded and "moved outside" in cmp_champion.to_markdown(found)
    with pytest.raises(LookupError, match="names no champion before version 1"):
        tracking.rollback("guarded", "again")


def test_the_history_is_plain_mlflow(store):
    from mlflow import MlflowClient

    v1 = _version("plain", "d1", "0.4")
    tracking.promote("plain", v1, job="train", reason="first")
    client = MlflowClient()
    experiment = client.get_experiment_by_name(tracking.HISTORY_EXPERIMENT)
    (run,) = client.search_runs([experiment.experiment_id], "tags.model_name = 'plain'")
    assert run.data.tags["to_version"] == v1 and run.data.tags["reason"] == "first"
    assert run.data.tags["job"] == "train" and run.data.metrics["to_mean_iu"] == 0.4
    assert run.info.status == "FINISHED" and "from_version" not in run.data.tags


def test_compare_flags_for_the_champion():
    assert parse(CompareConfig, ["--history", "--registered-model", "m"]).validate().history
    config = parse(CompareConfig, ["--rollback", "--registered-model", "m", "--to", "3",
                                   "--reason", "bad", "--force"])  # fmt: skip
    assert (config.to, config.reason, config.force) == ("3", "bad", True)
    for argv, message in (
        ([], "--experiment is required"),
        (["--rollback", "--registered-model", "m"], "needs --reason"),
        (["--history"], "need --registered-model"),
        (["--experiment", "e", "--force"], "go with --rollback only"),
        (["--history", "--rollback", "--registered-model", "m"], "give one"),
    ):
        with pytest.raises(ValueError, match=message):
            parse(CompareConfig, argv).validate()


def test_a_rolled_back_version_counts_as_older():
    models = ["models:/f/3", "models:/f/1", "models:/g/9"]
    assert plan.older_models(models, "models:/f/2") == ["models:/f/1", "models:/g/9"]
    retired = frozenset({"models:/f/3"})
    assert plan.older_models(models, "models:/f/2", retired) == models


def _night(output: Path, rows: list[dict]) -> None:
    (output / "_state").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema.STATE),
                   output / "_state" / "snapshot-x.parquet")  # fmt: skip


def test_explain_reads_the_state_and_the_registry(store, tmp_path):
    v1 = _version("explained", "d1", "0.5")
    tracking.promote("explained", v1, job="train", reason="first")
    output = tmp_path / "masks"
    (output / "a").mkdir(parents=True)
    mask = output / "a" / "b.png"
    mask.write_bytes(b"png")
    row = {"uri": "s3://in/a/b.jpg", "etag": "10:20", "mask_uri": str(mask), "status": "ok",
           "model": f"models:/explained/{v1}", "run_id": "20261204T000000Z-ab",
           "time": 2e9}  # fmt: skip
    _night(output, [row, {**row, "uri": "s3://in/c.jpg", "mask_uri": str(output / "c.png"),
                          "status": "error", "error": "broken"}])  # fmt: skip
    found = explain.explain(ExplainConfig(mask=str(mask)))
    assert (found.image, found.etag, found.output) == ("s3://in/a/b.jpg", "10:20", str(output))
    assert found.night.run_id == "20261204T000000Z-ab" and found.lineage.version == v1
    assert found.lineage.val_digest == "d1" and found.promotion.reason == "first"
    assert json.loads(json.dumps(found.to_dict()))["promotion"]["to_version"] == v1
    assert any(line.startswith("champion:") for line in explain.to_lines(found))

    stray = output / "a" / "stray.png"  # under the output, but no state row names it
    stray.write_bytes(b"png")
    job = _job("explain")
    for path in (stray, output / "c.png", tmp_path / "elsewhere.png"):
        assert job.main([str(path)]) == 2
    assert job.main([str(mask), "--json"]) == 0
