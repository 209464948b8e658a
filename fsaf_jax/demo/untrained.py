"""The network as training starts: the demo's untrained comparison.

`untrained_variables(config, mesh)` re-creates the variables a training run of `config`
starts from (`training.setup.initial_variables`, as the run's set-up), so the demo
scores the untrained network without the training loop keeping a copy of them.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from fsaf_jax.training import setup


def untrained_variables(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
  """The initial `{'params', 'batch_stats'}` of a run of `config`, on the host.

  Args:
    config: a resolved run config (`TrainResult.config`: `model.num_classes` set from
      the data); reads `seed`, `model`, `init`, `input.image_size`.
    mesh: the device mesh the variables are initialised on.

  Returns:
    NumPy arrays equal to the variables training started from (before any step).
  """
  num_classes = int(config.model.num_classes)
  if num_classes < 1:
    raise ValueError(
      f"config.model.num_classes={num_classes}: pass the resolved config (TrainResult.config)"
    )
  _, variables, _ = setup.initial_variables(config, num_classes, mesh)
  return jax.device_get(variables)
