"""Import published FCN weights as a checkpoint and, if asked, a registered MLflow model version.

--from is a .caffemodel (the authors' Caffe files, read without Caffe; nothing in it is run)
or a pytorch-fcn .pth state_dict (read with torch.load(weights_only=True)), local or any URI.
The model, its number of classes and width come from the file's layers unless --model names
the model. The checkpoint records Caffe's preprocessing (BGR, 0-255, VGG mean subtracted), so
segment and evaluate feed the net what it was trained on. With --registered-model the new
version is tagged with where its weights came from; the champion alias moves only with
--champion. Commands and the numbers to expect on PASCAL VOC: docs/paper-weights.md.
"""

import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import ImportConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/import_model.py --from fcn8s-heavy-pascal.caffemodel --output ./weights/fcn8s
  python jobs/import_model.py --from s3://bucket/fcn8s_from_caffe.pth \\
      --output s3://bucket/weights/fcn8s --registered-model fcn-voc --champion"""
FORMATS = {".caffemodel": "caffemodel", ".pth": "pytorch-fcn", ".pt": "pytorch-fcn"}
# Model version tags saying where the weights came from.
TAG_SOURCE, TAG_FORMAT, TAG_SHA256 = "fcn.source", "fcn.source_format", "fcn.source_sha256"


def _from_is_source(argv: list[str]) -> list[str]:
    """`--from X` / `--from=X` -> `--source X`: `from` cannot be a dataclass field name."""
    return [
        "--source" + arg[len("--from") :] if arg == "--from" or arg.startswith("--from=") else arg
        for arg in argv
    ]


def check_inputs(config: ImportConfig):
    """(format, class list or None) after checking everything that needs no weights read.
    Raises ValueError / FileNotFoundError with one line."""
    from fcn import storage
    from fcn.engine import checkpoint
    from fcn.engine.classes import parse_class_list

    suffix = os.path.splitext(config.source.rstrip("/"))[1].lower()
    if suffix not in FORMATS:
        raise ValueError(
            f"--from {config.source!r}: expected a .caffemodel or a pytorch-fcn .pth file"
        )
    fs, path = storage.filesystem(config.source)
    if not fs.isfile(path):
        raise FileNotFoundError(f"--from {config.source!r}: no such file")
    if fs.size(path) > config.max_bytes:
        raise ValueError(
            f"--from {config.source!r}: {fs.size(path)} bytes, more than --max-bytes "
            f"{config.max_bytes}"
        )
    if storage.exists(storage.join(config.output, checkpoint.CONFIG_FILE)):
        raise ValueError(f"--output {config.output!r} holds a checkpoint already; choose another")
    if config.registered_model == "":
        raise ValueError("--registered-model is empty; leave it out to skip registering")
    classes = None
    if config.classes:
        if not storage.exists(config.classes):
            raise FileNotFoundError(f"--classes {config.classes!r}: no such file")
        try:
            classes = parse_class_list(storage.read_text(config.classes))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"--classes {config.classes!r}: {err}") from None
    return FORMATS[suffix], classes


def load_weights(config: ImportConfig, fmt: str, data: bytes):
    """The model with the file's weights (its `preprocessing` set)."""
    import torch

    from fcn.engine.weights import caffe, pytorch_fcn

    if fmt == "caffemodel":
        try:
            return caffe.import_caffemodel(data, config.model, config.max_bytes)[0]
        except caffe.CaffeModelError as err:
            raise ValueError(
                f"--from {config.source!r} is not a readable .caffemodel: {err}"
            ) from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch's own message advises weights_only=False
        raise ValueError(
            f"--from {config.source!r} is not a plain state_dict file ({type(err).__name__})"
        ) from None
    file_name = os.path.basename(config.source.rstrip("/"))
    return pytorch_fcn.import_pytorch_fcn(state, config.model, file_name=file_name)[0]


def checkpoint_config(config: ImportConfig, model, classes, fmt: str, sha256: str) -> dict:
    from fcn import tracking
    from fcn.engine.models.surgery import model_name

    width = getattr(model, "width", 1.0)
    return {
        "model": model_name(model),
        "num_classes": model.num_classes,
        **({"width": width} if width != 1 else {}),
        "preprocessing": "caffe",  # every published FCN file (Caffe's, pytorch-fcn's) wants it
        "classes": classes.to_dict(),
        "weights_source": tracking.redact(config.source),
        "weights_format": fmt,
        "weights_sha256": sha256,
    }


def register(config: ImportConfig, local_dir: str, saved: dict) -> str:
    """Log the checkpoint directory in an MLflow run and make it a new version of
    --registered-model, tagged with its source; returns the version."""
    from mlflow.exceptions import MlflowException

    from fcn import tracking

    name = config.registered_model
    source = os.path.basename(config.source.rstrip("/"))
    run_id = tracking.start_run(config.experiment, f"import {source}")
    try:
        tracking.log_params(run_id, {k: v for k, v in saved.items() if k != "classes"})
        client = tracking.client()
        client.log_artifacts(run_id, local_dir, "checkpoint")
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name)
        tags = {
            TAG_SOURCE: saved["weights_source"],
            TAG_FORMAT: saved["weights_format"],
            TAG_SHA256: saved["weights_sha256"],
        }
        version = client.create_model_version(
            name, source=f"runs:/{run_id}/checkpoint", run_id=run_id, tags=tags
        ).version
        if config.champion:
            client.set_registered_model_alias(name, tracking.CHAMPION, version)
    except BaseException:
        tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id)
    return str(version)


def run(config: ImportConfig) -> dict:
    from fcn import storage
    from fcn.engine import checkpoint
    from fcn.engine.classes import default_classes

    fmt, classes = check_inputs(config)
    data = storage.read_bytes(config.source)
    model = load_weights(config, fmt, data)
    classes = classes or default_classes(model.num_classes)
    if classes.num_classes != model.num_classes:
        raise ValueError(
            f"--classes names {classes.num_classes} classes; the weights score {model.num_classes}"
        )
    saved = checkpoint_config(config, model, classes, fmt, hashlib.sha256(data).hexdigest())
    del data
    checkpoint.save(model.state_dict(), saved, config.output)
    result = {"config": saved, "version": None}
    if config.registered_model:
        if storage.is_remote(config.output):  # MLflow logs artifacts from a local directory
            with tempfile.TemporaryDirectory(prefix="fcn-import-") as local:
                checkpoint.save(model.state_dict(), saved, local)
                result["version"] = register(config, local, saved)
        else:
            result["version"] = register(config, storage.strip_scheme(config.output), saved)
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse(ImportConfig, _from_is_source(list(argv)), description=__doc__, epilog=EXAMPLES)
    try:
        result = run(config)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, exit 2
        print(f"import_model: {err}", file=sys.stderr)
        return 2
    saved = result["config"]
    width = f", width {saved['width']:g}" if "width" in saved else ""
    print(
        f"imported {saved['model']} ({saved['num_classes']} classes{width}) from "
        f"{saved['weights_source']} ({saved['weights_format']}, sha256 "
        f"{saved['weights_sha256'][:12]}...)"
    )
    print(f"checkpoint: {config.output}  (preprocessing: caffe)")
    if result["version"]:
        from fcn import tracking

        alias = f", alias {tracking.CHAMPION}" if config.champion else ""
        print(f"registered: models:/{config.registered_model}/{result['version']}{alias}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
