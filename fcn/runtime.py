"""Connecting to Ray the same way from every job, test and benchmark.

With `RAY_ADDRESS` set (a cluster, or a driver started by `ray job submit`), jobs connect to
it and inherit its runtime environment. Without it they start a local instance, with the
settings docs/environment.md found necessary on these machines.
"""

from __future__ import annotations

import os
import socket

# glibc's default mmap threshold costs every FCN forward ~440k page faults; with these, steps
# are 25-40% faster and steady. Workers must get them in their environment at start-up. One
# arena: the settings hold for glibc's main arena only, and Ray Train runs the training loop
# in a thread, whose own arena made its steps 40% slower than a plain loop's.
ALLOCATOR_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_ARENA_MAX": "1",
}

# Keep 127.0.0.1 as is (else drivers can hang), send no usage stats, and write no auth token
# (a bare local ray.init() otherwise writes one that breaks a later `ray job submit`).
LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
}


def worker_setup_hook():
    """The `worker_process_setup_hook` of a local instance: run at every worker's start-up, it
    puts the known Ray noise lines (docs/environment.md) at WARNING. Ray Train's workers log
    each reported result as a `TrainingReport(...)` dict at INFO, with a logger named by its
    file path, which RunConfig(logging_config=...) does not reach (it filters `ray.train.*`);
    our own progress line says the same in one line.

    A function made here, so that it travels by value: a worker runs the hook before the
    driver's sys.path applies, when `fcn` may not be importable (or be another checkout)."""

    def quiet_worker_logs() -> None:
        import logging
        import os

        import ray

        name = ("train", "v2", "_internal", "execution", "context.py")
        logging.getLogger(os.path.join(os.path.dirname(ray.__file__), *name)).setLevel("WARNING")

    return quiet_worker_logs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_ray(num_cpus: int | None = None) -> None:
    """Connect to `RAY_ADDRESS`, or start a local Ray whose workers get `ALLOCATOR_ENV`.

    `num_cpus` sizes a local instance only (logical CPUs, may exceed the cores: Ray Train
    workers and Ray Data tasks each reserve some); a cluster has its own.
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    # Ray Train's placement-group cleaner polls the state API, which the dashboard serves:
    # without it, it warns every second of the run. It looks the API up by scanning for Ray
    # instances, and with two on the machine (a test head, another job) it dies with a
    # traceback; naming this instance's dashboard settles which one.
    port = _free_port()
    api = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=True,
        dashboard_port=port,
        runtime_env={
            "env_vars": {**ALLOCATOR_ENV, **api},
            "worker_process_setup_hook": worker_setup_hook(),
        },
    )


def worker_resources(cpus: float, gpu: bool, placement: str | None = None) -> dict:
    """Ray resources of one training or evaluation worker: its CPUs, one whole GPU if any, and
    one unit of the custom resource `placement` if given (see `placement_resources`)."""
    return {"CPU": cpus, **({"GPU": 1} if gpu else {}), **placement_resources(placement)}


def placement_resources(placement: str | None) -> dict:
    """`{placement: 1}`, or nothing. A custom resource exists only on the nodes started with
    it (`ray start --resources '{"NAME": N}'`): a worker or model actor asking for one unit
    runs only there, N at a time per node (e.g. the GPU nodes, or the nodes near the data)."""
    return {placement: 1} if placement else {}
