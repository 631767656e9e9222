"""Multi-process start-up: one `jax.distributed.initialize` for TPU pods, Slurm GPU clusters and local runs.

Each process runs the same program; JAX then sees every device of every process, meshes span them all,
and each host feeds only its own rows of a global batch. Settings come from the environment so launch
scripts stay thin:
  ELM_JAX_COORDINATOR   host:port of process 0 (explicit, as jax's default port has changed between versions)
  ELM_JAX_NUM_PROCESSES, ELM_JAX_PROCESS_ID   for local or hand-rolled launches
  ELM_JAX_LOCAL_DEVICE_IDS   e.g. "3": the devices of this process, when there is one process per GPU
  ELM_JAX_INIT_TIMEOUT   seconds to wait for every process to join (default 300)
On TPU VMs and under Slurm, jax detects what is not given when ELM_JAX_DISTRIBUTED=1 is set; when the
coordinator, process count and id are all given, it detects nothing (each process sees all its devices
unless ELM_JAX_LOCAL_DEVICE_IDS says otherwise). launch/ has scripts for TPU pods, Slurm and local runs.
"""

from __future__ import annotations

import logging
import os

import jax


def maybe_initialize() -> bool:
    """Initializes jax.distributed when the environment asks for it; returns whether it did."""
    coordinator = os.environ.get("ELM_JAX_COORDINATOR")
    if not coordinator and os.environ.get("ELM_JAX_DISTRIBUTED", "0") != "1":
        return False
    kwargs = {}
    if coordinator:
        kwargs["coordinator_address"] = coordinator
    for env, name in (("ELM_JAX_NUM_PROCESSES", "num_processes"), ("ELM_JAX_PROCESS_ID", "process_id")):
        if env in os.environ:
            kwargs[name] = _integer(env, os.environ[env])
    if "ELM_JAX_LOCAL_DEVICE_IDS" in os.environ:  # one process per GPU: which of the node's GPUs is its own
        ids = os.environ["ELM_JAX_LOCAL_DEVICE_IDS"]
        kwargs["local_device_ids"] = [_integer("ELM_JAX_LOCAL_DEVICE_IDS", i, ids) for i in ids.split(",")]
    if {"coordinator_address", "num_processes", "process_id"} <= kwargs.keys():
        # All given: jax must not fill in the rest from the cluster, or under Slurm it restricts each process
        # to the one GPU of its local rank, even a process that should drive all GPUs of its node.
        kwargs["cluster_detection_method"] = "deactivate"
    timeout = _integer("ELM_JAX_INIT_TIMEOUT", os.environ.get("ELM_JAX_INIT_TIMEOUT", "300"))
    jax.distributed.initialize(initialization_timeout=timeout, **kwargs)
    logging.info(
        "process %d of %d: %d local devices, %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def _integer(env: str, text: str, whole: str | None = None) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{env}={whole if whole is not None else text!r} is not an integer") from None
