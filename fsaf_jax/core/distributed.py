"""Multi-process (multi-host) setup: joining the processes of one run.

Every process runs the same program (multi-controller JAX). `maybe_initialize_distributed`
joins them with `jax.distributed.initialize` when the environment asks for it, before
any other JAX call:

- explicit arguments (e.g. from train.py flags), or the environment variables
  `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID` (and optionally `JAX_LOCAL_DEVICE_IDS`, read by JAX itself);
- `auto=True` (or `FSAF_DISTRIBUTED=auto`): let JAX detect the cluster (Cloud TPU pod
  slices, SLURM, Open MPI, Kubernetes) and take everything from it;
- otherwise nothing happens: a single process over its local devices.
"""

from __future__ import annotations

import logging
import os

import jax

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
