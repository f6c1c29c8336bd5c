"""What every benchmark here needs once: the machine's matmul and convolution peaks, FLOP
counts, trial statistics, the allocator re-exec, loopback S3 servers and a model saved as the
jobs load it.

Plain torch (no Ray, MLflow or s3fs at import): benchmarks/gpu.py runs on GPU machines that
have only torch, numpy, Pillow, pyarrow and fsspec.
"""

from __future__ import annotations

import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def matmul_peak(
    threads: int | None = None,
    device: str = "cpu",
    dtype=None,
    sizes: tuple[int, ...] = (2048, 4096),
    trials: int = 5,
) -> float:
    """GFLOP/s of the best square matmul over `sizes` and `trials`: the machine's best.

    A low peak flatters every "% of peak" figure, so this takes the largest sizes and the
    fastest of several runs (on 2 cores here: ~265 GFLOP/s fp32 at 4096^2, ~180 at 2048^2
    with one unlucky run).
    """
    import torch

    dtype = dtype or torch.float32
    if threads:
        torch.set_num_threads(threads)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up: kernel selection, page faults
        for _ in range(trials):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def conv_peak(threads: int | None = None, trials: int = 5) -> float:
    """GFLOP/s of the best of `trials` 3x3 convolutions shaped like VGG's conv5 (512 -> 512
    channels, 64x64, channels_last, fp32 on CPU): the fastest dense kernel oneDNN runs here.

    On the AMD hosts here MKL's fp32 matmul (what `matmul_peak` times) trails oneDNN's
    convolutions (~190 against ~225 GFLOP/s on 2 cores), so a convolution network can run
    "above the matmul peak"; this is the stricter reference for convolution work.
    """
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    x = torch.randn(1, 512, 64, 64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3).contiguous(memory_format=torch.channels_last)
    flop = 2 * 512 * 512 * 9 * 64 * 64
    best = 0.0
    with torch.inference_mode():
        F.conv2d(x, w, padding=1)  # warm-up: primitive creation, page faults
        for _ in range(trials):
            start = time.perf_counter()
            F.conv2d(x, w, padding=1)
            best = max(best, flop / (time.perf_counter() - start) / 1e9)
    return best


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def forward_gflop(model, size: int, batch: int = 1) -> float:
    """Forward GFLOP of `model` on `batch` images of size x size, counted from the shapes."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(batch, 3, size, size, device=device))
    return counter.get_total_flops() / 1e9


def step_gflop(model, size: int, num_classes: int, batch: int = 1) -> float:
    """GFLOP of one training step (forward + backward of the per-pixel loss)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from fcn.engine import optim

    device = next(model.parameters()).device
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch, size, size), device=device)
    with FlopCounterMode(display=False) as counter:
        optim.pixel_loss(model(x), y, "mean").backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def spread(values: list[float]) -> str:
    """`median (min-max, n trials)`: these machines are noisy, one number is not a result."""
    if len(values) == 1:
        return f"{values[0]:.3g} (1 trial)"
    low, high = min(values), max(values)
    return f"{statistics.median(values):.3g} ({low:.3g}-{high:.3g}, {len(values)} trials)"


def reexec_with_allocator_settings(skip: bool = False) -> None:
    """Re-run this script with fcn.runtime.ALLOCATOR_ENV: glibc reads those variables only at
    process start (without them every FCN forward takes ~440k page faults; docs/environment.md)."""
    from fcn.runtime import ALLOCATOR_ENV

    if skip or all(os.environ.get(k) == v for k, v in ALLOCATOR_ENV.items()):
        return
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})


def _use_test_server(endpoint: str) -> None:
    """Point this process's AWS settings (and its children's) at a moto server's dummy account."""
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )


def start_s3_server(bucket: str) -> tuple[subprocess.Popen, str]:
    """A moto S3 server on a free loopback port with `bucket` created; sets the AWS_* variables
    of this process to reach it. Returns (process, "s3://bucket"); stop it with stop_server."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"moto_server did not answer at {endpoint}") from None
            time.sleep(0.1)
    _use_test_server(endpoint)
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return proc, f"s3://{bucket}"


class InProcessS3:
    """A moto S3 server in this process, for benchmarks of 10^5-10^6 objects: `put` seeds an
    object straight into moto's store (HTTP PUTs to moto run at ~100/s here), and a listing
    costs what it costs on S3, the page asked for, not a scan and sort of the whole bucket
    (moto's own listing does that on every request: ~1 s a page at 400,000 keys). Clients
    (other processes too) reach it over HTTP like any S3; this process's AWS_* variables
    are set to reach it. Stop it with `stop()`."""

    def __init__(self, bucket: str):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import S3Backend, s3_backends
        from moto.server import ThreadedMotoServer

        _index_listings(S3Backend)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        _use_test_server(f"http://{host}:{port}")
        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        self.backend.create_bucket(bucket, "us-east-1")
        self.bucket, self.uri = bucket, f"s3://{bucket}"

    def put(self, key: str, data: bytes) -> None:
        self.backend.put_object(self.bucket, key, data)

    def stop(self) -> None:
        self.server.stop()


def _index_listings(backend_class) -> None:
    """Make moto's `list_objects` (which `list_objects_v2` calls) visit only the keys under the
    prefix, found by bisection in a sorted index of the bucket's keys. The index is rebuilt
    after any write or delete (each bumps the key store's generation), so listings stay exact."""
    import bisect

    from moto.s3.utils import _VersionedKeyStore

    if getattr(backend_class, "_indexed", False):
        return
    generations = {}

    def bumping(method):
        def changed(self, *args, **kwargs):
            generations[id(self)] = generations.get(id(self), 0) + 1
            return method(self, *args, **kwargs)

        return changed

    for name in ("__setitem__", "__delitem__", "pop", "setlist"):
        setattr(_VersionedKeyStore, name, bumping(getattr(_VersionedKeyStore, name)))

    class Prefixed:
        """The bucket as moto's listing sees it: only the keys that start with `prefix`."""

        indexes = {}  # id(key store) -> (generation, sorted key names)

        def __init__(self, bucket, prefix):
            store = bucket.keys
            generation = generations.get(id(store), 0)
            cached = self.indexes.get(id(store))
            if cached is None or cached[0] != generation:
                cached = self.indexes[id(store)] = (generation, sorted(dict.keys(store)))
            names = cached[1]
            low = bisect.bisect_left(names, prefix)
            high = bisect.bisect_left(names, prefix + "\U0010ffff") if prefix else len(names)
            self.keys = Slice(store, names[low:high])

    class Slice:
        def __init__(self, store, names):
            self.store, self.names = store, names

        def items(self):
            return ((name, self.store[name]) for name in self.names)

    original = backend_class.list_objects

    def list_objects(self, bucket, prefix, delimiter, marker, max_keys):
        return original(self, Prefixed(bucket, prefix or ""), prefix, delimiter, marker, max_keys)

    backend_class.list_objects = list_objects
    backend_class._indexed = True


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def save_checkpoint(model, name: str, path: str | Path, num_classes: int = 21) -> None:
    """`model` (FCN `name`, e.g. random weights) as a checkpoint the jobs load: the config
    training writes for it (its input spec, and its width where the net has one)."""
    from fcn.engine import checkpoint
    from fcn.engine.models import preprocessing_for

    config = {"model": name, "num_classes": num_classes, "preprocessing": preprocessing_for(name)}
    if hasattr(model, "width"):
        config["width"] = model.width
    checkpoint.save(model.state_dict(), config, str(path))


def write_report(text: str, path: str | Path) -> None:
    """Print a benchmark's Markdown report and write it to `path` (results/<name>.md)."""
    print(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
