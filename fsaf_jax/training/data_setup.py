"""Makes the run's dataset ready: resolves its paths, writes synthetic data, builds TFDS.

`prepare_dataset(config, workdir)` is the first thing a training run does:

1. Empty `config.input.data_dir` means `WORKDIR/data/tfds`; with
   `config.input.synthetic.generate`, empty `manual_dir` means `WORKDIR/data/synthetic`.
   Paths are made absolute, so the config saved with the checkpoints finds the data
   again (eval.py, a resumed run started from another directory).
2. With `config.input.synthetic.generate`, the embedded synthetic dataset
   (`data_pipelines.synthetic`, Market-1501 layout) is written into `manual_dir` unless
   it is already there with the same settings.
3. The TFDS dataset `config.input.dataset` is built into `data_dir` unless built
   (`data_pipelines.datasets.source.build`).

Multi-process: process 0 writes and builds, the others wait at a barrier.
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

DATA_SUBDIR = "data"
SYNTHETIC_DATASET = "market1501"


def _absolute(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


def resolve_data_paths(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """A copy of `config` with absolute `input.data_dir` / `input.manual_dir` (see above)."""
  config = ml_collections.ConfigDict(config.to_dict())
  data_root = pathlib.Path(_absolute(os.fspath(workdir))) / DATA_SUBDIR
  config.input.data_dir = _absolute(config.input.data_dir or str(data_root / "tfds"))
  if config.input.synthetic.generate and not config.input.manual_dir:
    config.input.manual_dir = str(data_root / "synthetic")
  if config.input.manual_dir:
    config.input.manual_dir = _absolute(config.input.manual_dir)
  return config


def synthetic_config(
  synthetic_fields: ml_collections.ConfigDict,
) -> synthetic.SyntheticConfig:
  """`config.input.synthetic` as the generator's `SyntheticConfig`."""
  fields = synthetic_fields.to_dict()
  fields.pop("generate", None)
  difficulty = synthetic_render.Difficulty(**fields.pop("difficulty"))
  fields["image_size"] = tuple(fields["image_size"])
  return synthetic.SyntheticConfig(**fields, difficulty=difficulty)


def _jsonable(x):
  return json.loads(json.dumps(x))


def ensure_synthetic(config: ml_collections.ConfigDict) -> bool:
  """Writes the synthetic dataset into `config.input.manual_dir` if it is not there.

  Args:
    config: a config with resolved paths (`resolve_data_paths`) and
      `input.synthetic.generate` True.

  Returns:
    True if the data was generated now, False if it was already there.

  Raises:
    ValueError: `input.dataset` is not 'market1501', or `manual_dir` holds a synthetic
      dataset generated with other settings (the message names them).
  """
  if config.input.dataset != SYNTHETIC_DATASET:
    raise ValueError(
      f"config.input.synthetic.generate=True writes a Market-1501-layout dataset, but "
      f"config.input.dataset={config.input.dataset!r}: set it to {SYNTHETIC_DATASET!r}"
    )
  wanted = synthetic_config(config.input.synthetic)
  out = pathlib.Path(config.input.manual_dir)
  root = out / synthetic.MARKET_DIR
  meta_path = out / "synthetic.json"
  if root.is_dir() and any(root.iterdir()):
    if not meta_path.exists():
      raise ValueError(
        f"{root} exists but was not written by data_pipelines.synthetic (no "
        f"{meta_path}); set config.input.manual_dir to another folder or remove it"
      )
    saved = json.loads(meta_path.read_text())["config"]
    want = _jsonable(dataclasses.asdict(wanted))
    diffs = [
      f"{k}: on disk {saved.get(k)!r}, config {v!r}" for k, v in want.items() if saved.get(k) != v
    ]
    if diffs:
      raise ValueError(
        f"the synthetic dataset in {out} was generated with other settings:\n  "
        + "\n  ".join(diffs)
        + f"\nRemove {out} and {config.input.data_dir} to regenerate, or restore the "
        "config.input.synthetic fields."
      )
    return False
  if source_lib.get_builder(SYNTHETIC_DATASET, config.input.data_dir).is_prepared():
    raise ValueError(
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


def prepare_dataset(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """Resolves the data paths, writes synthetic data if asked, builds the TFDS dataset.

  Args:
    config: the run config.
    workdir: the run's work directory.

  Returns:
    A copy of `config` with absolute `input.data_dir` / `input.manual_dir`.
  """
  config = resolve_data_paths(config, workdir)
  if jax.process_index() == 0:
    if config.input.synthetic.generate:
      ensure_synthetic(config)
    builder = source_lib.get_builder(config.input.dataset, config.input.data_dir)
    if not builder.is_prepared():
      logging.info(
        "Building the TFDS dataset %s into %s", config.input.dataset, config.input.data_dir
      )
      source_lib.build(config.input.dataset, config.input.data_dir, config.input.manual_dir or None)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("fsaf_jax.prepare_dataset")
  return config
