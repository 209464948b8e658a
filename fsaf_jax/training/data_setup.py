"""Makes the run's training data ready: resolves its paths, builds TFDS, loads the union.

`prepare_dataset(config, workdir)` is the first thing a training run does:

1. Empty `config.input.data_dir` means `WORKDIR/data/tfds`. Paths are made absolute, so
   the config saved with the checkpoints finds the data again (eval.py, a resumed run
   started from another directory).
2. Every training set (`training_sets`: `config.input.dataset`, or the sets of
   `config.input.datasets`) is built into its data_dir unless built
   (`data_pipelines.datasets.source.build`).

`load_training_data(config)` then reads the training images of every set as one
source (`data_pipelines.union_source`: identities and cameras offset per set, and with
`config.input.combineall` each set's query and gallery joining its training images).

Several sets: `config.input.datasets` names them (TFDS names), `config.input.data_dirs`
/ `manual_dirs` give each its own data_dir / manual_dir ('' or () = the single
`data_dir` / `manual_dir`), and `config.input.dataset` must be the first of them: the
set evaluated by default. Once resolved, `data_dirs` / `manual_dirs` hold one absolute
path per set and `data_dir` / `manual_dir` are the first set's.

Multi-process: process 0 builds, the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines import errors, train_pipeline, union_source
from data_pipelines.dataset_list import DatasetRef, dataset_list
from data_pipelines.datasets import source as source_lib

DATA_SUBDIR = "data"
FIELD = "config.input"


def _absolute(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


def training_sets(config: ml_collections.ConfigDict) -> list[DatasetRef]:
  """The training sets of `config`: `input.datasets` or, when empty, `input.dataset`.

  Returns:
    One `DatasetRef` per set, in order (paths as the config gives them).

  Raises:
    errors.UserError: `input.datasets` is set and `input.dataset` is not its first
      entry, or a bad list (`dataset_list.dataset_list`).
  """
  inputs = config.input
  names = tuple(inputs.datasets) or (inputs.dataset,)
  refs = dataset_list(
    names,
    tuple(inputs.data_dirs),
    tuple(inputs.manual_dirs),
    data_dir=inputs.data_dir,
    manual_dir=inputs.manual_dir,
    field=FIELD,
  )
  if inputs.datasets and inputs.dataset != names[0]:
    raise errors.UserError(
      f"{FIELD}.dataset={inputs.dataset!r} but {FIELD}.datasets={names} starts with "
      f"{names[0]!r}: {FIELD}.dataset names the first training set (the one evaluated "
      "by default)",
      hint=f"set --{FIELD.removeprefix('config.')}.dataset={names[0]}, or list "
      f"{inputs.dataset!r} first",
    )
  return refs


def resolve_data_paths(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """A copy of `config` with absolute data paths (module doc, step 1)."""
  config = ml_collections.ConfigDict(config.to_dict())
  data_root = pathlib.Path(_absolute(os.fspath(workdir))) / DATA_SUBDIR
  config.input.data_dir = _absolute(config.input.data_dir or str(data_root / "tfds"))
  if config.input.manual_dir:
    config.input.manual_dir = _absolute(config.input.manual_dir)
  if config.input.datasets:
    sets = training_sets(config)
    config.input.data_dirs = tuple(_absolute(s.data_dir) for s in sets)
    config.input.manual_dirs = tuple(s.manual_dir and _absolute(s.manual_dir) for s in sets)
    config.input.data_dir = config.input.data_dirs[0]
    config.input.manual_dir = config.input.manual_dirs[0]
  return config


def _build(ref: DatasetRef) -> None:
  """Builds `ref` unless built; a build already there is checked against its manual_dir."""
  builder = source_lib.get_builder(ref.name, ref.data_dir)
  prepared = builder.is_prepared()
  if not prepared:
    logging.info("Building the TFDS dataset %s into %s", ref.name, ref.data_dir)
  if not prepared or ref.manual_dir:
    # A build already there is checked against manual_dir: training on a build made
    # from another copy of the dataset than the one named is refused, as the build
    # command refuses it.
    source_lib.build(ref.name, ref.data_dir, ref.manual_dir or None)


def prepare_dataset(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """Resolves the data paths and builds every training set's TFDS dataset.

  Args:
    config: the run config.
    workdir: the run's work directory.

  Returns:
    A copy of `config` with absolute data paths (`resolve_data_paths`).

  Raises:
    errors.OutputExistsError: a data_dir holds a set built from another copy than the
      one in its manual_dir (`source.build`).
  """
  config = resolve_data_paths(config, workdir)
  if jax.process_index() == 0:
    for ref in training_sets(config):
      _build(ref)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("fsaf_jax.prepare_dataset")
  return config


@dataclasses.dataclass(frozen=True)
class TrainingData:
  """The training images of every set, as one source.

  Attributes:
    source: the union (`union_source.UnionSource`): `person_id` 0..num_classes-1.
    person_ids: its labels, int64 [len(source)].
    num_classes: training identities over all sets.
    sets: each set's counts (`union_source.SetCounts`), in order.
  """

  source: union_source.UnionSource
  person_ids: np.ndarray
  num_classes: int
  sets: list[union_source.SetCounts]


def _split(name: str, split: str, data_dir: str) -> union_source.SplitLabels:
  source = source_lib.load_source(name, split, data_dir)
  person_ids, camera_ids = train_pipeline.read_labels(source)
  return union_source.SplitLabels(source, person_ids, camera_ids)


def load_training_data(config: ml_collections.ConfigDict) -> TrainingData:
  """The training sets of `config` (built, paths resolved) as one source (module doc).

  Raises:
    errors.InputNotFoundError: a set is not built in its data_dir.
  """
  splits = []
  refs = training_sets(config)
  for ref in refs:
    extra = ()
    if config.input.combineall:
      extra = tuple(_split(ref.name, s, ref.data_dir) for s in ("query", "gallery"))
    twice = sum(r.name == ref.name for r in refs) > 1  # copies told apart by data_dir
    splits.append(
      union_source.SetSplits(
        f"{ref.name} in {ref.data_dir}" if twice else ref.name,
        _split(ref.name, "train", ref.data_dir),
        extra,
        source_lib.junk_pids(ref.name, ref.data_dir),
      )
    )
  if config.input.combineall:
    logging.warning(
      "config.input.combineall: the query and gallery images of %s are training images; "
      "evaluating on any of them gives no test result",
      ", ".join(s.name for s in splits),
    )
  source, counts = union_source.union_of(splits)
  return TrainingData(source, source.person_ids, sum(c.ids for c in counts), counts)
