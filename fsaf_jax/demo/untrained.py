"""The network as training starts: the demo's untrained comparison.

`initial_variables(config, mesh)` re-creates the variables a training run of `config`
starts from (`train_state.init_variables` with the run's seed and model), so the demo
scores the untrained network without the training loop keeping a copy of them.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from fsaf_jax.models import registry
from fsaf_jax.training.train_state import init_variables


def initial_variables(config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, Any]:
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
  model = registry.create_model(config.model, num_classes)
  rng = jax.random.key(config.seed)
  image_size = tuple(int(s) for s in config.input.image_size)
  variables, _ = init_variables(config, model, rng, image_size, mesh)
  return jax.device_get(variables)
