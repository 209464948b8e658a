"""The demo's data: the embedded synthetic dataset, written where the run reads it.

`prepare_synthetic(config, workdir, wanted)` runs first in the demo's training run
(`train_loop.train_and_evaluate`'s `prepare_data` hook), before the TFDS build:

1. Empty `config.input.manual_dir` means `WORKDIR/data/synthetic`; the path is made
   absolute, so the config saved with the checkpoints finds the data again.
2. The dataset (`data_pipelines.synthetic`, Market-1501 layout) is written there unless
   it is already there with the same settings (`ensure_synthetic`).

Multi-process: process 0 writes, the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import jax
import ml_collections
from jax.experimental import multihost_utils

from data_pipelines import synthetic, synthetic_render
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import errors
from fsaf_jax.training import data_setup

SYNTHETIC_SUBDIR = "synthetic"
SYNTHETIC_DATASET = "market1501"


def synthetic_config(fields: ml_collections.ConfigDict) -> synthetic.SyntheticConfig:
  """`config.demo.synthetic` (configs/demo.py) as the generator's `SyntheticConfig`."""
  fields = fields.to_dict()
  difficulty = synthetic_render.Difficulty(**fields.pop("difficulty"))
  fields["image_size"] = tuple(fields["image_size"])
  return synthetic.SyntheticConfig(**fields, difficulty=difficulty)


def resolve_manual_dir(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """A copy of `config` with an absolute `input.manual_dir`, '' = WORKDIR/data/synthetic."""
  config = ml_collections.ConfigDict(config.to_dict())
  workdir = os.path.abspath(os.path.expanduser(os.fspath(workdir)))
  manual_dir = config.input.manual_dir or os.path.join(
    workdir, data_setup.DATA_SUBDIR, SYNTHETIC_SUBDIR
  )
  config.input.manual_dir = os.path.abspath(os.path.expanduser(manual_dir))
  return config


def _jsonable(x):
  return json.loads(json.dumps(x))


def ensure_synthetic(config: ml_collections.ConfigDict, wanted: synthetic.SyntheticConfig) -> bool:
  """Writes the synthetic dataset into `config.input.manual_dir` if it is not there.

  Args:
    config: a run config with absolute `input.manual_dir` (`resolve_manual_dir`) and
      `input.data_dir` (where the TFDS dataset is built).
    wanted: the dataset's settings (`synthetic_config`).

  Returns:
    True if the data was generated now, False if it was already there.

  Raises:
    errors.UserError: `input.dataset` is not 'market1501', `manual_dir` holds a synthetic
      dataset generated with other settings (the message names them), or `data_dir`
      holds a built dataset the synthetic data is missing for.
    errors.OutputExistsError: `manual_dir` holds a dataset it did not write.
  """
  if config.input.dataset != SYNTHETIC_DATASET:
    raise errors.UserError(
      f"the demo writes a Market-1501-layout dataset, but "
      f"config.input.dataset={config.input.dataset!r}: set it to {SYNTHETIC_DATASET!r}"
    )
  out = pathlib.Path(config.input.manual_dir)
  root = out / synthetic.MARKET_DIR
  meta_path = out / synthetic.META_FILE
  if root.is_dir() and any(root.iterdir()):
    if not meta_path.exists():
      raise errors.UserError(
        f"{root} exists but was not written by data_pipelines.synthetic (no "
        f"{meta_path}); set config.input.manual_dir to another folder or remove it"
      )
    saved = json.loads(meta_path.read_text())["config"]
    want = _jsonable(dataclasses.asdict(wanted))
    diffs = [
      f"{k}: on disk {saved.get(k)!r}, config {v!r}" for k, v in want.items() if saved.get(k) != v
    ]
    if diffs:
      raise errors.UserError(
        f"the synthetic dataset in {out} was generated with other settings:\n  "
        + "\n  ".join(diffs)
        + f"\nRemove {out} and {config.input.data_dir} to regenerate, or restore the "
        "config.demo.synthetic fields."
      )
    return False
  if source_lib.get_builder(SYNTHETIC_DATASET, config.input.data_dir).is_prepared():
    raise errors.UserError(
      f"{config.input.data_dir} already holds a built {SYNTHETIC_DATASET!r} dataset, but "
      f"the synthetic data it would come from is not in {out}: remove the built "
      f"dataset ({config.input.data_dir}/{SYNTHETIC_DATASET}) or use another "
      "config.input.data_dir"
    )
  logging.info("Writing the synthetic dataset to %s", out)
  plan = synthetic.generate(out, wanted)
  logging.info(
    "Synthetic dataset: %d images\n%s", len(plan.images), synthetic.format_statistics(plan)
  )
  return True


def prepare_synthetic(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  wanted: synthetic.SyntheticConfig,
) -> ml_collections.ConfigDict:
  """Resolves the data paths and writes the synthetic dataset unless it is there.

  Args:
    config: the run config.
    workdir: the run's work directory.
    wanted: the dataset's settings (`synthetic_config`).

  Returns:
    A copy of `config` with absolute `input.manual_dir` / `input.data_dir`
    (`data_setup.resolve_data_paths`).
  """
  config = data_setup.resolve_data_paths(resolve_manual_dir(config, workdir), workdir)
  if jax.process_index() == 0:
    ensure_synthetic(config, wanted)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("fsaf_jax.demo.prepare_synthetic")
  return config
