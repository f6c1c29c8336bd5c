"""The model side of the segment job: load a checkpoint once per actor, run it on batches.

`Predictor` is the Ray Data `map_batches` callable. Each actor reads its batch's bytes itself
(a thread pool): Ray Data's per-file readers cost ~1.6 ms per file here, a plain read far
less (ENVIRONMENT.md). It decodes (`fcn.masks`), runs the model on groups of equal-size
images (no padding, so a mask equals a direct forward pass of the image alone), writes each
mask atomically, then appends a manifest part (`fcn.manifest`), so finished work survives a
kill.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from fcn import images, manifest, masks, storage
from fcn.inference import load_model, predict

READ_THREADS = 8  # object-store reads are latency-bound: overlap them within a batch


def uri_key(uri: str) -> str:
    """The key a Parquet row's mask gets: its uri without scheme (`bucket/dir/x.jpg`)."""
    return storage.strip_scheme(uri).lstrip("/")


class Predictor:
    """Ray Data `map_batches` callable: one model per actor, one manifest row out per image."""

    def __init__(self, model_uri: str, settings: dict, run_id: str, done_ref=None):
        import torch

        self.settings = settings
        self.run_id = run_id
        self.model_uri = model_uri
        self.device = "cuda" if settings["gpus_per_actor"] > 0 else "cpu"
        threads = settings["threads"] or max(1, int(settings["cpus_per_actor"]))
        torch.set_num_threads(threads)
        loaded = load_model(model_uri, self.device)
        self.model, self.spec = loaded.model, loaded.preprocessing
        self.palette, self.num_classes = loaded.classes.palette(), loaded.num_classes
        if settings["shift_and_stitch"] and getattr(self.model, "skips", ()):
            # Fail the job once, not every image: 16s/8s fuse upsampled coarser scores.
            raise ValueError(
                "--shift-and-stitch needs a single-stride model (fcn32s, fcn-alexnet, "
                "fcn-googlenet); this checkpoint's model has skips"
            )
        self.done = {}
        if done_ref is not None:  # Parquet input: done-ness is only known once bytes are read
            import ray

            self.done = ray.get(done_ref[0])
        self.reader = ThreadPoolExecutor(READ_THREADS)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        results = [self._prepare(row) for row in self._read(rows)]
        self._forward([r for r in results if "image" in r])
        for result in results:
            if "mask" in result:
                self._write(result)
        out, now = [], time.time()  # one completion time per batch
        for result in results:
            result.pop("image", None)
            result.pop("mask", None)
            if result["status"] != "skipped":
                stages = ("read", "decode", "forward", "encode", "write")
                result["seconds"] = sum(result.get(f"{s}_seconds") or 0.0 for s in stages)
            result.update(model=self.model_uri, run_id=self.run_id, time=now)
            out.append(result)
        table = manifest.to_table(out)
        if out:  # after the masks: a part never names a mask that is not written
            name = f"{uuid.uuid4().hex}.parquet"
            manifest.write(storage.join(self.settings["parts_uri"], name), table)
        return table

    def _read(self, rows):
        if rows and "image" in rows[0]:  # Parquet input: the bytes came with the rows
            return [(row, row["image"], 0.0, None) for row in rows]

        def one(row):
            t = time.perf_counter()
            try:
                return row, storage.read_bytes(row["uri"]), time.perf_counter() - t, None
            except Exception as err:  # noqa: BLE001 - one unreadable object is one error row
                return row, None, time.perf_counter() - t, f"read failed: {err!r}"

        return list(self.reader.map(one, rows))

    def _prepare(self, item) -> dict:
        row, data, read_seconds, error = item
        result = {"uri": row["uri"], "read_seconds": read_seconds}
        if "image" in row:  # Parquet row: key the mask by its uri, version by its bytes
            result["size"] = len(data or b"")
            result["etag"] = "sha256:" + hashlib.sha256(data or b"").hexdigest()
            try:
                result["mask_uri"] = storage.join(
                    self.settings["output"], masks.mask_key(uri_key(row["uri"]))
                )
            except ValueError as err:
                return {**result, "status": "error", "error": f"bad uri: {err}"}
            previous = self.done.get((row["uri"], result["etag"]))
            if previous and not self.settings["force"]:
                note = previous.get("error") if previous["status"] == "error" else None
                return {**result, "status": "skipped", "error": note}
        else:
            result.update(mask_uri=row["mask_uri"], etag=row["etag"], size=row["size"])
        if error:
            return {**result, "status": "error", "error": error}
        t = time.perf_counter()
        try:
            image = images.decode_image(data, self.settings["max_pixels"])
        except images.BadImage as err:
            return {**result, "status": "error", "error": str(err)}
        except Exception as err:  # noqa: BLE001 - a Pillow bug on odd bytes is still one row
            return {**result, "status": "error", "error": f"decode failed: {err!r}"}
        result.update(image=image, height=image.shape[0], width=image.shape[1])
        result["decode_seconds"] = time.perf_counter() - t
        return result

    def _forward(self, results):
        groups = defaultdict(list)  # equal shapes stack without padding
        for result in results:
            groups[result["image"].shape].append(result)
        for group in groups.values():
            t = time.perf_counter()
            try:
                classes = predict(
                    self.model,
                    np.stack([r["image"] for r in group]),
                    self.spec,
                    self.settings["scales"],
                    self.settings["shift_and_stitch"],
                )
            except Exception as err:  # noqa: BLE001 - e.g. out of memory on one odd size
                for r in group:
                    r.update(status="error", error=f"forward failed: {err!r}")
                    r.pop("image")
                continue
            share = (time.perf_counter() - t) / len(group)
            for r, mask in zip(group, classes, strict=True):
                r.update(mask=mask, forward_seconds=share)

    def _write(self, result):
        t = time.perf_counter()
        mask = result["mask"]
        try:
            data = images.encode_mask(mask, self.palette)
            result["encode_seconds"] = time.perf_counter() - t
            t = time.perf_counter()
            storage.write_bytes(result["mask_uri"], data)
            result["write_seconds"] = time.perf_counter() - t
        except Exception as err:  # noqa: BLE001 - a failed write is one error row
            result.update(status="error", error=f"mask write failed: {err!r}")
            return
        result["status"] = "ok"
        if self.settings["class_counts"]:
            counts = np.bincount(mask.ravel(), minlength=self.num_classes)
            result["class_counts"] = counts.tolist()
