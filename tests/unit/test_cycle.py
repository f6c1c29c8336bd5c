"""jobs/cycle.py's driver side: which folders under --labels are exports, which are new, and the
settings it refuses (the turn itself runs in tests/integration/test_cycle_job.py)."""

from __future__ import annotations

import json

import pytest

from fcn.config import CycleConfig
from fcn.cycle import job as cycle


def _export(root, name):
    (root / name / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / name / "ImageSets" / "Segmentation" / "default.txt").write_text("a\n")


def test_exports_are_the_folders_holding_a_cvat_list_and_ingested_ones_are_known(tmp_path):
    labels, data = tmp_path / "labels", tmp_path / "data"
    for name in ("2026-11-27", "2026-12-04"):
        _export(labels, name)
    (labels / "notes").mkdir()
    (labels / "notes" / "readme.txt").write_text("not an export")
    done = data / "labeled" / "2026-11-27"
    done.mkdir(parents=True)
    (done / "_SUCCESS").write_text(json.dumps({}))
    config = CycleConfig(data=str(data), labels=str(labels), registered_model="m")
    exports = cycle.find_exports(config)
    assert [(e.name, e.ingested) for e in exports] == [("2026-11-27", True), ("2026-12-04", False)]
    assert exports[1].split() == "labeled/2026-12-04/default"


def test_an_export_nested_deeper_than_one_folder_is_refused(tmp_path):
    _export(tmp_path / "labels" / "week1", "inner")
    config = CycleConfig(data=str(tmp_path), labels=str(tmp_path / "labels"), registered_model="m")
    with pytest.raises(ValueError, match="not a folder directly under it"):
        cycle.find_exports(config)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iterations": 0}, "--iterations"),
        ({"train_split": "val"}, "must differ"),
        ({"eval_workers": -1}, "--eval-workers"),
    ],
)
def test_settings_that_cannot_work_are_one_line(change, message):
    with pytest.raises(ValueError, match=message):
        CycleConfig(data="d", labels="l", registered_model="m", **change).validate()
