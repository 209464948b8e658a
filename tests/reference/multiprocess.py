"""Multi-process test helpers: a coordination-service barrier, each process's rows of a
global batch and the global arrays assembled from them (the library's input pipeline
does this itself; these build hand-made batches for the multi-process tests), and a
launcher of CPU processes joined by jax.distributed."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import pytest
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from fsaf_jax.core.mesh import batch_sharding, check_batch_divisible
from tests.reference import ceiling

REPO = pathlib.Path(__file__).resolve().parents[2]


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
  from jax._src import distributed as jax_distributed  # noqa: PLC0415 (private, tests only)

  client = getattr(jax_distributed.global_state, "client", None)
  if client is None or not hasattr(client, "wait_at_barrier"):
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


def launch_processes(
  worker: str | os.PathLike, args: Sequence[str], num_processes: int, *, timeout: float = 900
) -> list[str]:
  """Runs `python worker *args` as `num_processes` CPU processes joined by jax.distributed.

  Each gets `JAX_COORDINATOR_ADDRESS` (a free localhost port), `JAX_NUM_PROCESSES`,
  `JAX_PROCESS_ID` and the repository on `PYTHONPATH`. Returns their outputs (stdout and
  stderr), in process order; fails the calling test (AssertionError with the output's
  tail) if one exits non-zero, and at the `timeout` ceiling ends them all with their
  stacks in the failure (tests/reference/ceiling.py).
  """
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs, files = [], []
  for pid in range(num_processes):
    env = dict(os.environ)
    env.update(
      JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
      JAX_NUM_PROCESSES=str(num_processes),
      JAX_PROCESS_ID=str(pid),
      PYTHONPATH=str(REPO),
    )
    env.pop("FSAF_DISTRIBUTED", None)
    # Output into files, not pipes: a process blocked on a full pipe that is not read yet
    # would stall the others at their next barrier.
    files.append(tempfile.TemporaryFile("w+"))
    procs.append(
      subprocess.Popen(
        [sys.executable, os.fspath(worker), *map(str, args)],
        env=env,
        cwd=REPO,
        stdout=files[-1],
        stderr=subprocess.STDOUT,
      )
    )
  deadline = time.monotonic() + timeout
  try:
    for p in procs:
      p.wait(timeout=max(deadline - time.monotonic(), 0))
  except subprocess.TimeoutExpired:
    hung = [ceiling.stacks_of(q) for q in procs]  # their stacks go to their output files
  else:
    hung = None
  logs = []
  for f in files:
    f.seek(0)
    logs.append(f.read())
    f.close()
  if hung is not None:
    pytest.fail(
      f"{worker}: still running after {timeout} s; each process's signal states, output and "
      "stacks:\n" + "\n".join(f"{h}\n{log[-6000:]}" for h, log in zip(hung, logs, strict=True)),
      pytrace=False,
    )
  for pid, (p, log) in enumerate(zip(procs, logs, strict=True)):
    assert p.returncode == 0, f"process {pid} failed ({p.returncode}):\n{log[-5000:]}"
  return logs
