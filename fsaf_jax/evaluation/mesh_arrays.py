"""Host arrays onto a device mesh and back, single- or multi-process.

Every process of a run holds the same host copy (every process embeds the whole query
and gallery sets); each places only its own devices' parts of a global array, and
reads a replicated result from its own copy.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding


def pad_rows(host: np.ndarray, multiple: int, fill: Any = 0) -> np.ndarray:
  """`host` [n, ...] with rows of `fill` appended up to a multiple of `multiple` rows
  (its dtype kept): the even split of an array over `multiple` devices."""
  pad = -host.shape[0] % multiple
  return np.concatenate([host, np.full((pad, *host.shape[1:]), fill, host.dtype)])


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A global array of `sharding` from the full host value (the same on every process)."""
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
  """`x` on the host; a replicated array of a multi-process mesh from this process's copy."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)
