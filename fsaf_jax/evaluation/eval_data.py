"""Which data an evaluation of a checkpoint reads: one rule, logged and recorded.

1. The dataset is `config.input.dataset` (another one than the checkpoint's is a
   cross-domain evaluation).
2. It is read from `config.input.data_dir` when one is named (eval.py: only
   `--config.input.data_dir=DIR` on the command line names one; the config file's value
   is the training's default and is not used, `named_data_paths`); else from the
   data_dir the checkpoint's run recorded. A run that used its work dir's default
   (`WORKDIR/data/tfds`) and whose work dir has moved since is read from the moved
   work dir's `data/tfds` (with one log line naming both).
3. A named `config.input.manual_dir` must hold the copy of the dataset the build was
   made from, as train.py checks (`source.check_built_from`); else the evaluation is
   refused naming both.

The data_dir read is logged ("Evaluating ... on DATASET in DATA_DIR") and recorded in
metrics.json (its `config.input.data_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import paths

DATA_PATH_FIELDS = ("input.data_dir", "input.manual_dir")


def named_data_paths(
  config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
  """A copy of `config` keeping `input.data_dir` / `input.manual_dir` only where the
  command line names them (`overrides`: `config_flags.get_override_values`); the
  others are emptied (the checkpoint's data, rule 2)."""
  config = ml_collections.ConfigDict(config.to_dict())
  for field in DATA_PATH_FIELDS:
    if field not in overrides:
      config.input[field.split(".", 1)[1]] = ""
  return config


def _is_built(dataset: str, data_dir: str) -> bool:
  return bool(data_dir) and source_lib.get_builder(dataset, data_dir).is_prepared()


def eval_data_config(
  config: ml_collections.ConfigDict,
  saved: ml_collections.ConfigDict,
  workdir: str | os.PathLike[str],
) -> ml_collections.ConfigDict:
  """A copy of `config` whose `input.data_dir` is the one the evaluation reads (rules
  above; absolute), its named `input.manual_dir` checked against the build.

  Args:
    config: the evaluation's config (`input.data_dir` / `manual_dir` empty unless named).
    saved: the checkpoint's config (the data paths its run recorded).
    workdir: the work dir holding the checkpoint now.

  Raises:
    errors.OutputExistsError: the named manual_dir holds another copy of the dataset
      than the build was made from.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  dataset = config.input.dataset
  named = paths.absolute(config.input.data_dir)
  recorded = paths.absolute(saved.input.data_dir)
  data_dir = named or recorded
  run_default = recorded.endswith(source_lib.WORKDIR_DATA_DIR)
  if not named and run_default and not _is_built(dataset, recorded):
    moved = os.path.join(paths.absolute(workdir), source_lib.WORKDIR_DATA_DIR)
    if moved != recorded and _is_built(dataset, moved):
      logging.info(
        "The work dir has moved: reading %s from %s (the run recorded %s)", dataset, moved, recorded
      )
      data_dir = moved
  config.input.data_dir = data_dir
  if config.input.manual_dir:
    config.input.manual_dir = paths.absolute(config.input.manual_dir)
    source_lib.check_built_from(dataset, data_dir, config.input.manual_dir)
  return config
