"""The import_model job's settings (jobs/import_model.py)."""

from __future__ import annotations

from dataclasses import dataclass

from fcn.config.fields import Settings, required, setting
from fcn.config.train import MODELS


@dataclass(frozen=True)
class ImportConfig(Settings):
    """Turn published weights (a Caffe .caffemodel or a pytorch-fcn .pth) into a checkpoint."""

    source: str = required(
        "the weights (also --from): a .caffemodel (the authors' Caffe files) or a pytorch-fcn "
        ".pth state_dict, as a local path or any URI (s3://...)"
    )
    output: str = required("checkpoint directory to write (model.pt + config.json), any URI")
    model: str | None = setting(
        None,
        "model name; default: read from the file's layers (a pytorch-fcn FCN-8s or at-once "
        "file whose name does not say which needs it)",
        # The names TrainConfig lists: one list of models.
        choices=MODELS,
    )
    classes: str | None = setting(
        None, "class list file as `ingest --classes` reads it; default: VOC's 21 classes"
    )
    registered_model: str | None = setting(
        None, "also log the checkpoint to MLflow as a new version of this registered model"
    )
    champion: bool = setting(False, "move the registered model's 'champion' alias to it")
    experiment: str = setting("fcn-import", "MLflow experiment of the import run")
    # The published FCN-VGG16 files are ~540 MB; Caffe itself reads at most INT_MAX bytes.
    max_bytes: int = setting(2**31 - 1, "largest weights file read")
