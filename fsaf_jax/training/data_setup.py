"""Makes the run's dataset ready: resolves its paths, builds TFDS.

`prepare_dataset(config, workdir)` is the first thing a training run does:

1. Empty `config.input.data_dir` means `WORKDIR/data/tfds`. Paths are made absolute, so
   the config saved with the checkpoints finds the data again (eval.py, a resumed run
   started from another directory).
2. The TFDS dataset `config.input.dataset` is built into `data_dir` unless built
   (`data_pipelines.datasets.source.build`).

Multi-process: process 0 builds, the others wait at a barrier.
"""

from __future__ import annotations

import os
import pathlib

import jax
import ml_collections
from jax.experimental import multihost_utils

from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import paths

DATA_SUBDIR = "data"


def resolve_data_paths(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """A copy of `config` with absolute `input.data_dir` / `input.manual_dir` (see above)."""
  config = ml_collections.ConfigDict(config.to_dict())
  data_root = pathlib.Path(paths.absolute(os.fspath(workdir))) / DATA_SUBDIR
  config.input.data_dir = paths.absolute(config.input.data_dir or str(data_root / "tfds"))
  if config.input.manual_dir:
    config.input.manual_dir = paths.absolute(config.input.manual_dir)
  return config


def prepare_dataset(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """Resolves the data paths and builds the TFDS dataset.

  Args:
    config: the run config.
    workdir: the run's work directory.

  Returns:
    A copy of `config` with absolute `input.data_dir` / `input.manual_dir`.

  Raises:
    errors.OutputExistsError: `data_dir` holds the dataset built from another copy
      than the one in `manual_dir` (`source.build`).
  """
  config = resolve_data_paths(config, workdir)
  if jax.process_index() == 0:
    source_lib.ensure_built(
      config.input.dataset, config.input.data_dir, config.input.manual_dir or None
    )
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("fsaf_jax.prepare_dataset")
  return config
