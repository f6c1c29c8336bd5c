"""Export a checkpoint or registered model as ONNX, with dynamic height and width.

--model is any model URI the other jobs take (models:/NAME@ALIAS, models:/NAME/VERSION,
runs:/..., a checkpoint directory, local or s3://). Writes OUTPUT/model.onnx: input `image`
(N x 3 x H x W float32, preprocessed as the checkpoint says), output `logits`; the
preprocessing and the class names and colours are in its metadata_props (fcn.*). Before the
file is written, ONNX Runtime runs it against the PyTorch net at --check-sizes: masks equal on
>= 99.9% of the pixels and scores within tolerance at each size, or nothing is written (exit
1). With --register the file is also logged beside a registered version (docs/mlflow.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, unpackaged

from fcn.config import ExportConfig, parse  # noqa: E402

EXAMPLES = """examples:
  python jobs/export.py --model models:/fcn-demo@champion --output demo/onnx   # after make demo
  python jobs/export.py --model models:/fcn@champion --output s3://bucket/onnx/fcn --register
  python jobs/export.py --model s3://bucket/runs/voc-8s/best --output ./onnx \\
      --check-sizes 500x375 375x500"""


def main(argv=None) -> int:
    try:
        config = parse(ExportConfig, argv, description=__doc__, epilog=EXAMPLES)
        from fcn.tracking import export  # after parsing: --help needs no torch

        pinned, _ = export.validate(config)
        result = export.run(config, pinned)
    except (ValueError, FileNotFoundError) as err:  # the checks' own one-line messages
        print(f"error: {err}", file=sys.stderr)
        return 2
    for p in result.parity:
        h, w = p.size
        print(f"  {h}x{w}: masks agree on {p.mask_agreement:.4%} of pixels, max score error "
              f"{p.max_score_error:.2e} {'ok' if p.ok else 'MISMATCH'}")  # fmt: skip
    if not result.parity_ok:
        print("error: ONNX Runtime's output differs from PyTorch's: nothing written",
              file=sys.stderr)  # fmt: skip
        return 1
    config_ = result.config
    print(f"exported {result.model_uri} ({config_.model}, {config_.num_classes} classes) -> "
          f"{result.onnx_uri} ({result.size_bytes / 2**20:.1f} MiB, sha256 "
          f"{result.sha256[:12]}...)")  # fmt: skip
    if result.registered:
        print(f"registered: {result.registered} (tag onnx_model of {result.model_uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
