"""The device mesh: one 'data' axis over every device of every process.

Training is data-parallel in the global view: the batch is sharded along the mesh's
`'data'` axis (`batch_sharding`) and the train state is replicated (`replicated`); a
`jax.jit` over the mesh then computes exactly what one device would compute on the
whole global batch.
"""

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """1-D mesh with axis `'data'`.

  Args:
    devices: the devices to span; default all devices of all processes
      (`jax.devices()`). They are ordered by (process index, device id), so each
      process holds a contiguous block of the batch axis.

  Returns:
    A `Mesh` of shape (len(devices),), axis name 'data', axis type Auto (sharding
    given by `in_shardings` / `out_shardings`, propagated by the compiler).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("make_mesh needs at least one device")
  devices.sort(key=lambda d: (d.process_index, d.id))
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', other axes whole: `P('data')`."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh: `P()`."""
  return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ValueError unless `global_batch_size` splits evenly over the mesh.

  Args:
    global_batch_size: examples per step summed over all processes.
    mesh: the data-parallel mesh.
  """
  n = mesh.devices.size
  if global_batch_size % n:
    raise ValueError(
      f"global batch size {global_batch_size} is not divisible by the {n} devices of "
      f"the 'data' mesh axis ({jax.process_count()} process(es)); choose P x K (config."
      f"input.num_identities x num_instances) so that P*K is a multiple of {n}"
    )
