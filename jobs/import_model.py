"""Import published FCN weights as a checkpoint and, if asked, a registered MLflow model version.

--from is a .caffemodel (the authors' Caffe files, read without Caffe; nothing in it is run)
or a pytorch-fcn .pth state_dict (read with torch.load(weights_only=True)), local or any URI.
The model, its number of classes and width come from the file's layers unless --model names
the model. The checkpoint records Caffe's preprocessing (BGR, 0-255, VGG mean subtracted), so
segment and evaluate feed the net what it was trained on. With --registered-model the new
version is an MLflow pyfunc model like a trained one, tagged with where its weights came from;
the champion alias moves only with --champion, and only under the registry's rule (an imported
version has no validation score: it becomes champion when there is none or the champion has
no val digest either). Commands and the numbers to expect on PASCAL VOC: docs/paper-weights.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import ImportConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/import_model.py --from fcn8s-heavy-pascal.caffemodel --output ./weights/fcn8s
  python jobs/import_model.py --from s3://bucket/fcn8s_from_caffe.pth \\
      --output s3://bucket/weights/fcn8s --registered-model fcn-voc --champion"""


def _from_is_source(argv: list[str]) -> list[str]:
    """`--from X` / `--from=X` -> `--source X`: `from` cannot be a dataclass field name."""
    return [
        "--source" + arg[len("--from") :] if arg == "--from" or arg.startswith("--from=") else arg
        for arg in argv
    ]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse(ImportConfig, _from_is_source(list(argv)), description=__doc__, epilog=EXAMPLES)
    from fcn import tracking
    from fcn.engine.weights import published

    try:
        saved = published.import_weights(config)
    except (ValueError, FileNotFoundError) as err:  # bad input: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    width = f", width {saved['width']:g}" if "width" in saved else ""
    print(
        f"imported {saved['model']} ({saved['num_classes']} classes{width}) from "
        f"{saved['weights_source']} ({saved['weights_format']}, sha256 "
        f"{saved['weights_sha256'][:12]}...)"
    )
    print(f"checkpoint: {config.output}  (preprocessing: caffe)")
    if not config.registered_model:
        return 0
    version, decision = tracking.register_imported(
        config.output, saved, config.registered_model, config.experiment, config.champion
    )
    alias = f", alias {tracking.CHAMPION}" if decision and decision.is_champion else ""
    print(f"registered: models:/{config.registered_model}/{version}{alias}")
    if decision and decision.refusal:  # registered, but --champion could not be honoured
        print(f"error: champion unchanged: {decision.refusal}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
