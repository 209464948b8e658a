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

Several sets: `config.input.datasets` lists them, each entry a TFDS name or
`'name@folder'` (the folder holding its download; `data_pipelines.dataset_list`), and
`config.input.dataset` must be the first name: the set evaluated by default. The first
set's folder may instead be `config.input.manual_dir`; the others without a folder are
read from TFDS's `<data_dir>/downloads/manual`. Every set is built into
`config.input.data_dir`, a second copy of one dataset into
`<data_dir>/<name>@<its folder's base name>/`. Once resolved, the entries' folders are
absolute and `config.input.manual_dir` is the first set's folder.

Multi-process: process 0 builds, the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from data_pipelines import dataset_list, train_pipeline, union_source
from data_pipelines.dataset_list import DatasetRef
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import errors, paths

DATA_SUBDIR = source_lib.WORKDIR_DATA_SUBDIR
FIELD = "config.input"


def training_sets(config: ml_collections.ConfigDict) -> list[DatasetRef]:
  """The training sets of `config` (module doc) and where each is built.

  Returns:
    One `DatasetRef` per set, in order.

  Raises:
    errors.UserError: a malformed entry of `input.datasets`, `input.dataset` not its
      first name, `input.manual_dir` and the first entry's folder both given and
      different, or one set twice (`dataset_list.place`).
  """
  inputs = config.input
  manual_dir = paths.absolute(inputs.manual_dir) if inputs.manual_dir else None
  if not inputs.datasets:
    return [DatasetRef(inputs.dataset, inputs.data_dir, manual_dir)]
  field = f"{FIELD}.datasets"
  entries = [dataset_list.parse_entry(entry, field) for entry in inputs.datasets]
  name, folder = entries[0]
  if inputs.dataset != name:
    raise errors.UserError(
      f"{FIELD}.dataset={inputs.dataset!r} but {field} starts with {name!r}: "
      f"{FIELD}.dataset names the first training set (the one evaluated by default)",
      hint=f"set --{FIELD}.dataset={name}, or list {inputs.dataset!r} first",
    )
  if folder and manual_dir and folder != manual_dir:
    raise errors.UserError(
      f"{FIELD}.manual_dir={inputs.manual_dir!r} but {field} reads its first set, "
      f"{name!r}, from {folder}: give the folder once",
      hint=f"drop --{FIELD}.manual_dir, or write {name!r} without '@folder' in {field}",
    )
  entries[0] = (name, folder or manual_dir)
  return dataset_list.place(entries, inputs.data_dir, field)


def resolve_data_paths(
  config: ml_collections.ConfigDict, workdir: str | os.PathLike
) -> ml_collections.ConfigDict:
  """A copy of `config` with absolute data paths (module doc, step 1)."""
  config = ml_collections.ConfigDict(config.to_dict())
  default = os.path.join(os.fspath(workdir), source_lib.WORKDIR_DATA_DIR)
  config.input.data_dir = paths.absolute(config.input.data_dir or default)
  if config.input.manual_dir:
    config.input.manual_dir = paths.absolute(config.input.manual_dir)
  if config.input.datasets:
    sets = training_sets(config)
    config.input.datasets = tuple(
      s.name + (f"{dataset_list.FOLDER_SEPARATOR}{s.manual_dir}" if s.manual_dir else "")
      for s in sets
    )
    config.input.manual_dir = sets[0].manual_dir or ""
  return config


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
      source_lib.ensure_built(ref.name, ref.data_dir, ref.manual_dir)
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
    twice = sum(r.name == ref.name for r in refs) > 1  # copies told apart by their folder
    splits.append(
      union_source.SetSplits(
        f"{ref.name} from {ref.manual_dir}" if twice else ref.name,
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
