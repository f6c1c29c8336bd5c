"""A registered FCN as an MLflow pyfunc model: what `mlflow.pyfunc.load_model` and
`mlflow models serve` run.

The model directory (`save`) holds:
- artifact `checkpoint/`: the checkpoint directory as training wrote it (model.pt, a plain
  state_dict, and config.json): no pickled network. `python_model.pkl` is `FcnModel`
  pickled by reference to this module, no state;
- `code/fcn/`: this package, so the model loads outside a checkout of the project;
- the signature, an input example, and requirements: the project's own pins (pyproject.toml)
  for the packages inference imports.

Input: a DataFrame with one column `image`, one encoded image (PNG, JPEG, ...: whatever
`fcn.images.decode_image` reads, EXIF orientation applied) per row, as bytes. Over HTTP MLflow
takes a binary column base64-encoded:
    {"dataframe_split": {"columns": ["image"], "data": [["<base64 of the image file>"]]}}
Output: one row per image: `mask`, the class index map (H x W uint8, the decoded image's size;
nested lists in JSON), and `png`, that map as the palette PNG `jobs/segment.py` writes
(base64 in JSON). `fcn.inference` computes both, as it does for the segment job.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import shutil
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from fcn.engine import images, inference

IMAGE_COLUMN = "image"
CHECKPOINT_ARTIFACT = "checkpoint"
# What inference imports (torch, the models, the image codec, the checkpoint reader and its
# storage layer, MLflow itself): the rest of the project (Ray, S3 clients) serving never loads.
SERVING_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "pyarrow", "fsspec", "mlflow")


class FcnModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.loaded = inference.load_model(context.artifacts[CHECKPOINT_ARTIFACT], device)
        self.palette = self.loaded.classes.palette()

    def predict(self, context, model_input, params=None):
        """DataFrame with column `image` (encoded bytes) -> DataFrame `mask`, `png`."""
        masks, pngs = [], []
        for data in model_input[IMAGE_COLUMN]:
            image = images.decode_image(bytes(data))
            # One image per forward: a request's images may all differ in size. An image
            # too large for one forward runs as tiles (the same mask, bounded memory).
            mask = inference.predict(
                self.loaded.model, image[None], self.loaded.preprocessing, tile="auto"
            )
            masks.append(mask[0])
            pngs.append(images.encode_mask(mask[0], self.palette))
        return pd.DataFrame({"mask": masks, "png": pngs})


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(
            [ColSpec(Array(Array(DataType.integer)), "mask"), ColSpec(DataType.binary, "png")]
        ),
    )


def input_example() -> pd.DataFrame:
    """One small RGB PNG: what a caller sends, in the form the signature names."""
    from PIL import Image

    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[2:6, 2:6] = (200, 120, 40)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [buffer.getvalue()]})


def requirements() -> list[str]:
    """The project's requirement lines for SERVING_PACKAGES: the installed distribution's
    metadata, or pyproject.toml when the code runs from a checkout that is not installed."""
    from packaging.requirements import Requirement

    try:
        lines = importlib.metadata.requires("fcn") or []
    except importlib.metadata.PackageNotFoundError:
        import tomllib

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        lines = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    wanted = []
    for line in lines:
        requirement = Requirement(line)
        if requirement.marker is None and requirement.name.lower() in SERVING_PACKAGES:
            wanted.append(str(requirement))
    missing = set(SERVING_PACKAGES) - {Requirement(r).name.lower() for r in wanted}
    if missing:
        raise RuntimeError(f"the project declares no requirement for {sorted(missing)}")
    return wanted


def save(checkpoint_dir: str, path: str) -> None:
    """Write the pyfunc model of checkpoint directory `checkpoint_dir` to the new `path`."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory(prefix="fcn-code-") as tmp:
        code = os.path.join(tmp, "fcn")
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__"))
        mlflow.pyfunc.save_model(
            path,
            python_model=FcnModel(),
            artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir},
            code_paths=[code],
            signature=signature(),
            input_example=input_example(),
            pip_requirements=requirements(),
        )
