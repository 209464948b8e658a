"""Multi-process (multi-host) setup and global batches from per-process data.

Every process runs the same program (multi-controller JAX). `maybe_initialize_distributed`
joins them with `jax.distributed.initialize` when the environment asks for it, before
any other JAX call:

- explicit arguments (e.g. from train.py flags), or the environment variables
  `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID` (and optionally `JAX_LOCAL_DEVICE_IDS`, read by JAX itself);
- `auto=True` (or `FSAF_DISTRIBUTED=auto`): let JAX detect the cluster (Cloud TPU pod
  slices, SLURM, Open MPI, Kubernetes) and take everything from it;
- otherwise nothing happens: a single process over its local devices.

Each process then loads its own part of every global batch (`process_batch_slice`) and
`global_batch` assembles the global `jax.Array`s, sharded over the mesh's 'data' axis,
without any cross-host copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from fsaf_jax.training.mesh import batch_sharding, check_batch_divisible

_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "JAX_PROCESS_ID"
_ENV_AUTO = "FSAF_DISTRIBUTED"


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def maybe_initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool | None = None,
  initialization_timeout: int = 300,
) -> bool:
  """Calls `jax.distributed.initialize` if asked to (see the module docstring).

  Must run before anything else touches JAX devices.

  Args:
    coordinator_address: 'host:port' of process 0; default `$JAX_COORDINATOR_ADDRESS`.
    num_processes: default `$JAX_NUM_PROCESSES`.
    process_id: this process, 0..num_processes-1; default `$JAX_PROCESS_ID`.
    auto: use JAX's cluster auto-detection when no address is given; default True iff
      `$FSAF_DISTRIBUTED == 'auto'`.
    initialization_timeout: seconds to wait for all processes to join.

  Returns:
    True if JAX runs distributed (initialised now or before), False for a plain single
    process.

  Raises:
    ValueError: an address without the process count / id (or the reverse).
  """
  if jax.distributed.is_initialized():
    return True
  address = coordinator_address or os.environ.get(_ENV_ADDRESS) or None
  if num_processes is None:
    num_processes = _env_int(_ENV_NUM_PROCESSES)
  if process_id is None:
    process_id = _env_int(_ENV_PROCESS_ID)
  if auto is None:
    auto = os.environ.get(_ENV_AUTO, "").lower() == "auto"

  explicit = (address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError(
        "multi-process JAX needs all of coordinator address, number of processes and "
        f"process id (flags or ${_ENV_ADDRESS}, ${_ENV_NUM_PROCESSES}, "
        f"${_ENV_PROCESS_ID}); got address={address!r}, num_processes={num_processes}, "
        f"process_id={process_id}"
      )
    logging.info(
      "jax.distributed.initialize(%s, num_processes=%d, process_id=%d)",
      address,
      num_processes,
      process_id,
    )
    jax.distributed.initialize(
      address,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=initialization_timeout,
    )
    return True
  if auto:
    logging.info("jax.distributed.initialize() with cluster auto-detection")
    jax.distributed.initialize(initialization_timeout=initialization_timeout)
    return True
  return False


def barrier(name: str, timeout_seconds: int = 900) -> None:
  """Blocks until every process reaches `barrier(name)`; no-op in a single process.

  Uses the coordination service of `jax.distributed` (not a device collective), so it
  can wait far longer than the 30 s in which CPU (gloo) collectives must find all
  processes. Multi-process CPU runs should compile the step first
  (`step.jitted.lower(state, batch).compile()`), then call `barrier`, then run it:
  otherwise a process that compiles much slower than the others (a persistent-cache
  miss) makes their first collective fail with "Gloo context initialization failed:
  DEADLINE_EXCEEDED".

  Args:
    name: barrier id, the same on every process and unique per call site.
    timeout_seconds: how long to wait for the others.
  """
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return
  # jax.distributed has no public barrier; its client (private) has one.
  from jax._src import distributed as jax_distributed  # noqa: PLC0415

  client = getattr(jax_distributed.global_state, "client", None)
  if client is None or not hasattr(client, "wait_at_barrier"):
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(name)
    return
  client.wait_at_barrier(name, timeout_in_ms=timeout_seconds * 1000)


def process_batch_slice(global_batch_size: int, mesh: Mesh) -> slice:
  """Rows of the global batch that this process loads.

  With `make_mesh`'s device order (by process), process p owns the p-th contiguous
  block of `global_batch_size / process_count` rows.

  Args:
    global_batch_size: examples per step over all processes.
    mesh: the data mesh.

  Returns:
    `slice(start, stop)` into the global batch.
  """
  check_batch_divisible(global_batch_size, mesh)
  processes = sorted({d.process_index for d in mesh.devices.flat})
  per_process = global_batch_size // len(processes)
  p = processes.index(jax.process_index())
  return slice(p * per_process, (p + 1) * per_process)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays sharded on 'data' from this process's part of the batch.

  Args:
    local_batch: dict of host arrays, each [B_local, ...] with the same B_local on
      every process (`B_local = B_global / process_count`).
    mesh: the data mesh.

  Returns:
    Dict of `jax.Array`s of shape [B_local * process_count, ...], batch axis sharded
    over the mesh's 'data' axis (this process's rows on its own devices).
  """
  sizes = {k: np.shape(v)[0] for k, v in local_batch.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"batch entries disagree on the batch size: {sizes}")
  local_size = next(iter(sizes.values()))
  local_devices = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  if local_size % local_devices:
    raise ValueError(
      f"process-local batch size {local_size} is not divisible by this process's "
      f"{local_devices} devices (global batch {local_size * jax.process_count()} over "
      f"{mesh.devices.size} devices)"
    )
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }
