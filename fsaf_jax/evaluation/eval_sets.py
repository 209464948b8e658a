"""The evaluation sets of a run: `config.eval.datasets`, each resolved to its data.

  sets = eval_sets(config)          # [EvalSet(name, label, data_dir, manual_dir, folder)]
  prepare_eval_set(sets[0])         # builds its TFDS data unless built (process 0)

`config.eval.datasets` is a tuple of entries, each a TFDS name (`'dukemtmc_reid'`) or a
name and the folder holding that dataset's download (`'dukemtmc_reid@/data/DukeMTMC-reID'`,
the `manual_dir` of `python -m data_pipelines.datasets.build`):

- empty (the default): the training set (`config.input.dataset`, `input.data_dir`,
  `input.manual_dir`); its results keep the single-set layout `eval/step_<N>/`.
- otherwise each entry is evaluated, its results in `eval/step_<N>/<label>/`. An entry
  naming the training set (the same name and no folder, or the same folder) is the
  training set's data. Any other entry is built on first use into `input.data_dir`,
  from its folder if it gives one (else TFDS's `<data_dir>/downloads/manual`), unless
  that would replace another set's build there (the same TFDS name from another
  folder: the training set's or another entry's), in which case it is built into
  `input.data_dir/<name>@<the folder's base name>`.

The label (results folder, table title, TensorBoard prefix) is the name ('/' written
'_': 'msmt17_v2'); two entries of one name are told apart by their folder's base name:
`'market1501@/data/synth_a'` -> 'market1501@synth_a'.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
from jax.experimental import multihost_utils

from data_pipelines.dataset_list import FOLDER_SEPARATOR, own_data_dir
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import errors


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One evaluation set and where its data lives.

  Attributes:
    name: TFDS name ('market1501', 'msmt17/v2').
    label: its name in results folders, tables and TensorBoard.
    data_dir: where its TFDS data is (or will be) built.
    manual_dir: the download folder it is built from, or None (TFDS's default).
    folder: the subfolder of `eval/step_<N>/` its results go to; None for the single
      default set (results directly in `eval/step_<N>/`).
    build: built on first use (`prepare_eval_set`); False for the default set, whose
      data the run (or eval.py's checkpoint) already names.
  """

  name: str
  label: str
  data_dir: str
  manual_dir: str | None = None
  folder: str | None = None
  build: bool = False


def parse_entry(entry: object) -> tuple[str, str | None]:
  """(name, absolute folder or None) of one `config.eval.datasets` entry.

  Raises:
    errors.UserError: not a string 'name' or 'name@folder' (named, with the value).
  """
  if not isinstance(entry, str) or not entry.strip(FOLDER_SEPARATOR + " "):
    raise errors.UserError(
      f"config.eval.datasets entry {entry!r}: must be a TFDS name or 'name@folder'",
      hint='e.g. --config.eval.datasets=\'("market1501", "dukemtmc_reid@/data/DukeMTMC-reID")\'',
    )
  name, sep, folder = entry.partition(FOLDER_SEPARATOR)
  if not name or (sep and not folder):
    raise errors.UserError(
      f"config.eval.datasets entry {entry!r}: must be a TFDS name or 'name@folder'"
    )
  return name, os.path.abspath(os.path.expanduser(folder)) if folder else None


def check_entries(datasets: object) -> tuple[str, ...]:
  """`config.eval.datasets`, checked: a tuple of well-formed entries with distinct labels.

  Raises:
    errors.UserError: not a tuple / list of strings, a malformed entry, or two entries
      with the same label.
  """
  if isinstance(datasets, str) or not isinstance(datasets, tuple | list):
    raise errors.UserError(
      f"config.eval.datasets={datasets!r}: must be a tuple of TFDS names or 'name@folder' "
      "entries (empty: the training set)"
    )
  entries = [parse_entry(entry) for entry in datasets]
  _labels(entries)
  return tuple(datasets)


def _label(name: str) -> str:
  return name.replace("/", "_")


def _labels(entries: list[tuple[str, str | None]]) -> list[str]:
  names = [name for name, _ in entries]
  labels = []
  for name, folder in entries:
    label = _label(name)
    if names.count(name) > 1 and folder is not None:
      label += FOLDER_SEPARATOR + os.path.basename(folder.rstrip(os.sep))
    labels.append(label)
  for label in labels:
    if labels.count(label) > 1:
      raise errors.UserError(
        f"config.eval.datasets: two entries are both {label!r} (results folder "
        "eval/step_<N>/" + label + "/)",
        hint="list a set once; two copies of one dataset need folders of different names",
      )
  return labels


def eval_sets(config: ml_collections.ConfigDict) -> list[EvalSet]:
  """The run's evaluation sets (module doc), in the order of `config.eval.datasets`.

  Args:
    config: the run config with resolved (absolute) `input.data_dir` /
      `input.manual_dir`.

  Raises:
    errors.UserError: a malformed `config.eval.datasets` (`check_entries`).
  """
  data_dir = config.input.data_dir
  train_folder = config.input.manual_dir or None
  datasets = check_entries(config.eval.get("datasets", ()))
  if not datasets:
    name = config.input.dataset
    return [EvalSet(name, _label(name), data_dir, train_folder)]
  entries = [parse_entry(entry) for entry in datasets]
  labels = _labels(entries)
  # Which folder each TFDS name is built from in data_dir (the training set's first).
  owner = {config.input.dataset: train_folder}
  sets = []
  for (name, folder), label in zip(entries, labels, strict=True):
    if name == config.input.dataset and folder in (None, train_folder):
      sets.append(EvalSet(name, label, data_dir, train_folder, folder=label, build=True))
      continue
    here = data_dir
    if name in owner and owner[name] != folder:
      here = os.path.join(data_dir, own_data_dir(name, folder))
    else:
      owner[name] = folder
    sets.append(EvalSet(name, label, here, folder, folder=label, build=True))
  return sets


def prepare_eval_set(eval_set: EvalSet) -> None:
  """Builds the set's TFDS data unless built (process 0; the others wait).

  A build already there is checked against `manual_dir` (`source.build` refuses a
  build made from another copy of the dataset). Nothing is done for the default set.

  Raises:
    errors.InputNotFoundError: not built and no download in its folder (the hint says
      where to get it).
    errors.OutputExistsError: built there from another copy of the dataset.
  """
  if not eval_set.build:
    return
  if jax.process_index() == 0:
    source_lib.ensure_built(eval_set.name, eval_set.data_dir, eval_set.manual_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"fsaf_jax.prepare_eval_set.{eval_set.label}")
