"""What every benchmark here needs once: the machine's matmul peak, FLOP counts, trial
statistics, the allocator re-exec and a loopback S3 server.

Plain torch (no Ray, MLflow or s3fs at import): benchmarks/gpu.py runs on GPU machines that
have only torch, numpy, Pillow, pyarrow and fsspec.
"""

from __future__ import annotations

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

    from fcn import optim

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
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return proc, f"s3://{bucket}"


def stop_server(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def write_report(text: str, path: str | Path) -> None:
    """Print a benchmark's Markdown report and write it to `path` (results/<name>.md)."""
    print(text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
