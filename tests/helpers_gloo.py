"""Several gloo processes on this machine, for the tests that check a reduction or a DDP step
against one process doing all the work.

`spawn(worker, world, tmp_path, *args)` runs `worker(rank, world, *args)` in `world` processes
with the default process group up. The group meets through a file, not TCP: rank 0 would host a
TCPStore whose server thread, torn down while another rank still held a connection, aborted the
process now and then, and a free port can be taken before it is bound. Each process leaves with
`os._exit` once the group is destroyed: even then a rank aborted now and then at interpreter exit,
in C++ destructors with no Python frame ("terminate called without an active exception"), about
one run in three under pytest on a 2-core machine. An exception in `worker` still fails the spawn.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, world: int, rendezvous: str, worker: Callable, args: tuple) -> None:
    torch.set_num_threads(1)  # two processes on two cores: one thread each
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank,
                            world_size=world)  # fmt: skip
    try:
        worker(rank, world, *args)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(worker: Callable, world: int, tmp_path: Path, *args) -> None:
    """Run `worker(rank, world, *args)` in `world` gloo processes; raise if any fails."""
    rendezvous = str(tmp_path / "gloo-rendezvous")
    mp.spawn(_run, args=(world, rendezvous, worker, args), nprocs=world)
