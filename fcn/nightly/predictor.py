"""The segment job's model actor: load the model once, turn decoded images into class maps.

`Predictor` is the Ray Data `map_batches` callable between the CPU stages of
`fcn.nightly.stages`: it gets decoded pixels (`schema.DECODED` rows) and does only
preprocessing, the forward pass, argmax and the per-image confidence statistics (so a slow
store never idles the accelerator). Equal-size images are stacked without padding (a mask
equals a direct forward pass of the image alone), in groups of at most `batch_size` images and
`max_batch_pixels` pixels, so memory stays bounded whatever the image sizes. Inputs go
channels_last (faster convolutions on CPU and GPU). With `--runtime onnxruntime` the forward
runs on ONNX Runtime (`fcn.engine.onnx_runtime.OnnxModel`) and everything around it is the same
code.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import pyarrow as pa

from fcn.config import SegmentConfig
from fcn.engine import tiles
from fcn.nightly import schema
from fcn.nightly.schema import Status


class Predictor:
    """Ray Data `map_batches` callable: decoded rows in, the same rows with `mask` out."""

    def __init__(self, model_uri: str, config: SegmentConfig):
        # torch and the model's modules load here, in the actor: the job's driver names this
        # class to Ray Data and never loads a model (a night's driver starts without torch).
        import torch

        from fcn.engine.onnx_export import export
        from fcn.engine.onnx_runtime import OnnxModel
        from fcn.tracking.models import load_model

        self.config = config
        self.device = "cuda" if config.gpus_per_actor > 0 else "cpu"
        threads = config.threads or max(1, int(config.cpus_per_actor))
        torch.set_num_threads(threads)
        if config.runtime == "onnxruntime":
            # The export jobs/export.py writes, made from the checkpoint this actor loaded:
            # ONNX Runtime gets host tensors and moves them to the GPU itself.
            loaded = load_model(model_uri, "cpu")
            self.model = OnnxModel(
                export(loaded.model, loaded.config), threads, cuda=self.device == "cuda"
            )
            self.device = "cpu"  # nothing for torch to synchronize
        else:
            loaded = load_model(model_uri, self.device)  # channels_last already
            self.model = loaded.model
        self.spec, self.num_classes = loaded.preprocessing, loaded.num_classes
        if config.shift_and_stitch and getattr(self.model, "skips", ()):
            # Fail the job once, not every image: 16s/8s fuse upsampled coarser scores.
            raise ValueError(
                "--shift-and-stitch needs a single-stride model (fcn32s, fcn-alexnet, "
                "fcn-googlenet); this checkpoint's model has skips"
            )
        self.tiling = config.tiling()
        if config.tile not in ("auto", "none"):  # refused once here, not on every image
            tiles.check_side(self.model, int(config.tile), min(config.scales), config.tile_margin)

    def __call__(self, batch: pa.Table) -> pa.Table:
        started = time.perf_counter()
        out = {name: [None] * batch.num_rows for name in schema.PREDICTED.names}
        status, error = batch.column("status").to_pylist(), batch.column("error").to_pylist()
        for rows in self._groups(batch, status):
            pixels = batch.column("pixels")
            h, w = batch.column("height")[rows[0]].as_py(), batch.column("width")[rows[0]].as_py()
            stack = np.stack(
                [np.frombuffer(pixels[i].as_buffer(), np.uint8).reshape(h, w, 3) for i in rows]
            )
            try:
                classes, stats, seconds = self._classify(stack)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory on one odd size
                for i in rows:
                    status[i], error[i] = Status.ERROR, f"forward failed: {err!r}"
                continue
            for j, i in enumerate(rows):
                counts = np.bincount(classes[j].ravel(), minlength=self.num_classes)
                out["mask"][i] = classes[j].tobytes()
                out["forward_seconds"][i] = seconds / len(rows)
                out["classes_present"][i] = int((counts > 0).sum())
                if self.config.class_counts:
                    out["class_counts"][i] = counts.tolist()
                for name, values in stats.items():  # fcn.engine.inference.STATISTICS
                    out[name][i] = float(values[j])
        table = batch.drop_columns(["pixels", "status", "error"])
        table = table.append_column("status", pa.array(status, pa.string()))
        table = table.append_column("error", pa.array(error, pa.string()))
        for field in schema.PREDICTED:
            table = table.append_column(field, pa.array(out[field.name], field.type))
        share = (time.perf_counter() - started) / max(1, sum(m is not None for m in out["mask"]))
        model_seconds = [share if m is not None else None for m in out["mask"]]
        return table.append_column(
            schema.MODEL_SECONDS, pa.array(model_seconds, schema.MODEL_SECONDS.type)
        )

    def _groups(self, batch: pa.Table, status: list):
        """Row indices to stack: equal shapes, within the image and pixel budgets."""
        shapes = defaultdict(list)
        heights, widths = batch.column("height").to_pylist(), batch.column("width").to_pylist()
        for i, (h, w) in enumerate(zip(heights, widths, strict=True)):
            if status[i] is None:
                shapes[(h, w)].append(i)
        for (h, w), rows in shapes.items():
            per_forward = max(
                1, min(self.config.batch_size, self.config.max_batch_pixels // (h * w))
            )
            for start in range(0, len(rows), per_forward):
                yield rows[start : start + per_forward]

    def _classify(self, stack: np.ndarray):
        """(class maps N x H x W uint8, confidence statistics, model seconds)."""
        import torch

        from fcn.engine.inference import predict

        t = time.perf_counter()
        classes, stats = predict(
            self.model, stack, self.spec, self.config.scales, self.config.shift_and_stitch,
            statistics=True, tile=self.tiling.tile, tile_memory=self.tiling.memory,
            tile_margin=self.tiling.margin,
        )  # fmt: skip
        if self.device == "cuda":
            torch.cuda.synchronize()
        return classes, stats, time.perf_counter() - t
