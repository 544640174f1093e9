"""Several processes (one per host): ``jax.distributed.initialize`` with its settings from flags or the environment.

This is a thin front to JAX's own runtime: process 0 runs the coordination service, the
processes find each other through it, and XLA's collectives (NCCL on GPUs, gloo on CPUs) carry
the all-reduces of a data-parallel step. After it, ``jax.devices()`` lists every process's
devices, ``data_mesh()`` spans them all, and the same program runs in every process (SPMD).

Failure behaviour is JAX's: every process sends heartbeats to the coordination service; when
one stops (a crash, a kill, a lost host) the service tells the others, which terminate (abort,
exit status 134 on Linux) with "Terminating process because the JAX distributed service
detected fatal errors. This most likely indicates that another task died" after at most
``heartbeat_timeout_seconds``. A surviving process never waits forever in a collective.
"""

from __future__ import annotations

import os

import jax

__all__ = ["initialize_distributed"]

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_seconds: int = 100,
    initialization_timeout: int = 300,
    local_device_ids: list[int] | None = None,
) -> bool:
    """Join this process to a multi-process JAX run; call it first, before any other JAX call.

    Each argument left None is read from the environment: ``JAX_COORDINATOR_ADDRESS``
    (``host:port`` of process 0, where the coordination service listens), ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID`` (0 .. n-1). When none of the three is given anywhere, this is a
    one-process run and nothing is done (returns False). On a cluster that JAX detects by
    itself (Slurm, Open MPI, Cloud TPU), call ``jax.distributed.initialize()`` directly instead.

    On CPU the collectives between processes are gloo's
    (``jax_cpu_collectives_implementation``, set here unless already chosen).

    Args:
        coordinator_address: ``host:port`` of process 0 (the same in every process).
        num_processes: the number of processes.
        process_id: this process's id.
        heartbeat_timeout_seconds: after this long without a heartbeat from a process, the
            others terminate with an error naming the dead task (JAX's default: 100).
        initialization_timeout: how long to wait for all processes to connect.
        local_device_ids: restrict this process to these local devices (e.g. one GPU per
            process).

    Returns:
        True when this process joined a multi-process run, False for a single process.

    Raises:
        ValueError: only some of the three settings are given, or they are malformed.

    Example:
        >>> from gendsl.inference import initialize_distributed
        >>> initialize_distributed()  # no settings in the environment: one process, nothing to do
        False
    """
    address = coordinator_address if coordinator_address is not None else os.environ.get(ENV_COORDINATOR)
    count = num_processes if num_processes is not None else _int_env(ENV_NUM_PROCESSES)
    index = process_id if process_id is not None else _int_env(ENV_PROCESS_ID)
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if all(v is None for v in given.values()):
        return False
    missing = sorted(k for k, v in given.items() if v is None)
    if missing:
        raise ValueError(
            f"initialize_distributed: got {sorted(k for k in given if k not in missing)} but not {missing}; give all "
            f"three (arguments or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID})"
        )
    if ":" not in str(address):
        raise ValueError(f"initialize_distributed: coordinator_address must be host:port, got {address!r}")
    if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"initialize_distributed: need 0 <= process_id < num_processes, got {index!r} and {count!r}")
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=count,
        process_id=index,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
    return True


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"initialize_distributed: {name} must be an integer, got {value!r}") from None
