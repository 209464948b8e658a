"""A list of datasets named in a config: each one's TFDS name, data_dir and manual_dir.

A built dataset is identified by its TFDS name (with config: 'msmt17/v2') and the
data_dir it is built in (TFDS writes `<data_dir>/<name>/<version>/`); its manual_dir is
where the download is read from when it is built. A config names several datasets
with aligned tuples beside the single-valued fields they default to:

    names       ('market1501', 'dukemtmc_reid')
    data_dirs   ()  or  ('', '/data/duke_tfds')   '' or () = data_dir
    manual_dirs ()  or  ('/data/Market', '')      '' or () = manual_dir

(the same dataset name twice, e.g. two synthetic Market-1501 folders, needs two
data_dirs: one build per name and data_dir). `dataset_list` checks and aligns them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from data_pipelines import errors

# Characters that cannot be in a TFDS name: a tuple written without its quotes on the
# command line arrives as one name holding them.
_NOT_IN_NAMES = ",()[]' \""


@dataclasses.dataclass(frozen=True)
class DatasetRef:
  """One dataset of a list.

  Attributes:
    name: TFDS name, optionally 'name/config'.
    data_dir: where it is built.
    manual_dir: where its download is read from; '' = TFDS's `<data_dir>/downloads/manual`.
  """

  name: str
  data_dir: str
  manual_dir: str


def _same_place(a: str, b: str) -> bool:
  return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def dataset_list(
  names: Sequence[str],
  data_dirs: Sequence[str],
  manual_dirs: Sequence[str],
  *,
  data_dir: str,
  manual_dir: str,
  field: str,
) -> list[DatasetRef]:
  """Aligns per-dataset paths with `names` (module doc) and checks the list.

  Args:
    names: TFDS names.
    data_dirs, manual_dirs: () or one entry per name; '' entries take the default.
    data_dir, manual_dir: the defaults.
    field: the config section for messages, e.g. 'config.input'.

  Returns:
    One `DatasetRef` per name, in order.

  Raises:
    errors.UserError: a path tuple of another length than `names`, a name that is
      not a TFDS name (e.g. a tuple without its quotes), or the same dataset twice
      (same name and data_dir).
  """
  names = tuple(names)
  for name in names:
    if not isinstance(name, str) or not name or any(c in name for c in _NOT_IN_NAMES):
      raise errors.UserError(
        f"{field}.datasets holds {name!r}, not a TFDS dataset name",
        hint=f"write the tuple with its quotes: --{field.removeprefix('config.')}"
        ".datasets=\"('market1501', 'dukemtmc_reid')\"",
      )
  for what, values in (("data_dirs", data_dirs), ("manual_dirs", manual_dirs)):
    if len(values) not in (0, len(names)):
      raise errors.UserError(
        f"{field}.{what} has {len(values)} entries for {len(names)} datasets "
        f"({field}.datasets={names}): give one per dataset ('' = {field}.{what[:-1]}), or ()"
      )
  refs = [
    DatasetRef(
      name,
      (data_dirs[i] if data_dirs else "") or data_dir,
      (manual_dirs[i] if manual_dirs else "") or manual_dir,
    )
    for i, name in enumerate(names)
  ]
  for i, ref in enumerate(refs):
    for other in refs[:i]:
      if other.name == ref.name and _same_place(other.data_dir, ref.data_dir):
        raise errors.UserError(
          f"{field}.datasets names {ref.name!r} in data_dir {ref.data_dir} twice",
          hint=f"list each dataset once; two copies of one dataset need two data_dirs "
          f"({field}.data_dirs)",
        )
  return refs
