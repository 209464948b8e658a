"""A work dir holding checkpoints of the tiny model on the tiny Market-1501 tree
(`tiny_market`), without training: what eval.py reads.

`save_run(workdir, data_dir, steps)` saves, through the training code's checkpoint
manager, the untrained tiny model at each step with distinct weights and BN statistics
(so that the checkpoints score differently), and the run config recording `data_dir`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import tiny
from data_pipelines import train_pipeline
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.models import registry
from fsaf_jax.training import checkpoint as checkpoint_lib
from fsaf_jax.training.train_state import create_train_state
from tests.reference import tiny_market


def run_config(data_dir: str | pathlib.Path, max_rank: int = 10) -> ml_collections.ConfigDict:
  """The config of the 'training run' (resolved as the train loop saves it)."""
  config = tiny.get_config()
  config.input.data_dir = str(data_dir)
  config.input.num_identities, config.input.num_instances = 2, 2
  config.model.num_classes = tiny_market.NUM_TRAIN_IDS
  config.train.steps_per_epoch = 1
  config.eval.max_rank = max_rank
  config.eval.num_figure_queries = 3
  return config


def save_run(
  workdir: str | pathlib.Path,
  config: ml_collections.ConfigDict,
  steps: Sequence[int],
) -> dict[int, Any]:
  """Saves checkpoints of `config`'s model at `steps` into `workdir`.

  Returns:
    {step: host variables} of each checkpoint.
  """
  data_dir = config.input.data_dir
  mesh = make_mesh()
  model = registry.create_model(config.model, tiny_market.NUM_TRAIN_IDS)
  state = create_train_state(
    config,
    model,
    jax.random.key(0),
    tiny_market.NUM_TRAIN_IDS,
    tuple(config.input.image_size),
    steps_per_epoch=1,
    mesh=mesh,
  )
  train_iter = train_pipeline.create_train_iterator(
    source_lib.load_source(tiny_market.DATASET, "train", data_dir), config, mesh, seed=0
  )
  manager = checkpoint_lib.create_checkpoint_manager(workdir, keep=5)
  saved = {}
  rng = np.random.default_rng(0)
  for step in steps:
    # Distinct weights and BN statistics per checkpoint.
    state = state.replace(
      step=jax.numpy.asarray(step, jax.numpy.int32),
      params=jax.tree.map(lambda p: p * (1.0 + 0.2 * rng.standard_normal()), state.params),
      batch_stats=jax.tree.map(
        lambda v: v + rng.uniform(0.0, 0.5, v.shape).astype(v.dtype), state.batch_stats
      ),
    )
    checkpoint_lib.save_checkpoint(manager, step, state, train_iter, config)
    saved[step] = jax.device_get(state.variables)
  manager.wait_until_finished()
  manager.close()
  return saved
