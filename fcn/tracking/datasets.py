"""Datasets: content digests of Parquet splits and the splits as a run's dataset inputs."""

from __future__ import annotations

import hashlib
import warnings

from fcn.tracking.runs import client, redact

DATASET_CONTEXT = "mlflow.data.context"  # MLflow's input tag naming a dataset's role


def dataset_digest(split_uri: str, limit: int | None = None) -> str:
    """Content digest of a split's Parquet files (`<root>/<split>/`, local or s3://).

    sha256 over each file's key below `split_uri` and its bytes, files in key order: the same
    data under another root has the same digest; any changed byte or renamed shard changes
    it. `limit` (the first N rows scored, `--val-limit`) is part of the digest: a subset is
    other data than the whole split.
    """
    from fcn import storage

    files = storage.list_files(split_uri, (".parquet",))
    if not files:
        raise FileNotFoundError(f"no Parquet files under {split_uri!r}")
    digest = hashlib.sha256()
    for info in files:
        digest.update(storage.relative_key(split_uri, info.uri).encode() + b"\0")
        fs, path = storage.filesystem(info.uri)
        with fs.open(path, "rb") as f:
            while chunk := f.read(1 << 23):
                digest.update(chunk)
    if limit is not None:
        digest.update(f"\0limit={limit}".encode())
    return digest.hexdigest()[:32]  # MLflow stores at most 36 characters


def log_split_inputs(
    run_id: str,
    splits: dict[str, str | list[str]],
    limits: dict[str, int | None] | None = None,
    uri=None,
) -> dict[str, str]:
    """Log each split as an MLflow dataset input of the run; returns context -> digest.

    `splits`: context -> split URI, e.g. {"train": "s3://b/voc/train", "val": "s3://b/voc/val"}
    (the context becomes the input's `mlflow.data.context`), or a list of split URIs used
    together (each an input with that context; the digest is then over their digests, in
    order); `limits`: context -> rows used. Each digest is also the run tag `<context>_digest`
    (`val_digest` for "val"), which registration copies onto the model version.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    inputs, digests = [], {}
    for context, value in splits.items():
        limit = (limits or {}).get(context)
        parts = []
        for split_uri in [value] if isinstance(value, str) else value:
            parts.append(dataset_digest(split_uri, limit))
            clean = redact(split_uri)
            with warnings.catch_warnings():  # a local path matches two equivalent local sources
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(clean)
            name = clean.rstrip("/").rsplit("/", 1)[-1] + (f"[:{limit}]" if limit else "")
            dataset = MetaDataset(source, name=name, digest=parts[-1])
            tag = InputTag(DATASET_CONTEXT, context)
            inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=[tag]))
        joined = hashlib.sha256(" ".join(parts).encode()).hexdigest()[:32]
        digests[context] = parts[0] if len(parts) == 1 else joined
    mlflow_client = client(uri)
    mlflow_client.log_inputs(run_id, datasets=inputs)
    for context, digest in digests.items():
        mlflow_client.set_tag(run_id, f"{context}_digest", digest)
    return digests
