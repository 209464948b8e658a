"""A list of datasets named in a config, each entry `'name'` or `'name@folder'`.

A built dataset is identified by its TFDS name (with config: 'msmt17/v2') and the
data_dir it is built in (TFDS writes `<data_dir>/<name>/<version>/`); its folder
(manual_dir) is where its download is read from when it is built. A config lists
datasets as entries `'name'` or `'name@folder'` (the folder holding that dataset's
download, the `--manual_dir` of `python -m data_pipelines.datasets.build`), the
spelling of `config.input.datasets` and `config.eval.datasets`:

    ('market1501@/data/Market-1501-v15.09.15', 'dukemtmc_reid@/data/DukeMTMC-reID')

Every set is built into the config's data_dir, except a second copy of one dataset
(the same name from another folder, e.g. two synthetic Market-layout folders): one
data_dir holds one build per name, so it is built into
`<data_dir>/<name>@<the folder's base name>/` (`own_data_dir`), the same whatever the
rest of the list.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from fsaf_jax.core import errors, paths

FOLDER_SEPARATOR = "@"
# Characters no TFDS name has: a tuple written without its quotes on the command line
# arrives as one entry holding them.
_NOT_IN_NAMES = ",()[]' \""


@dataclasses.dataclass(frozen=True)
class DatasetRef:
  """One dataset of a list and where its data live.

  Attributes:
    name: TFDS name, optionally 'name/config'.
    data_dir: where it is (or will be) built.
    manual_dir: the folder its download is read from, or None (TFDS's
      `<data_dir>/downloads/manual`).
  """

  name: str
  data_dir: str
  manual_dir: str | None


def parse_entry(entry: object, field: str) -> tuple[str, str | None]:
  """(name, absolute folder or None) of one entry `'name'` / `'name@folder'` of `field`.

  Raises:
    errors.UserError: not such a string (e.g. a tuple written without its quotes).
  """
  name, sep, folder = entry.partition(FOLDER_SEPARATOR) if isinstance(entry, str) else ("", "", "")
  if not name or (sep and not folder) or any(c in name for c in _NOT_IN_NAMES):
    raise errors.UserError(
      f"{field} entry {entry!r}: must be a TFDS name or 'name@folder'",
      hint=f"write the tuple with its quotes: --{field}="
      "\"('market1501', 'dukemtmc_reid@/data/DukeMTMC-reID')\"",
    )
  return name, paths.absolute(folder) if folder else None


def own_data_dir(name: str, folder: str | None) -> str:
  """'<name>@<folder's base name>' ('/' in the name written '_'): the folder, under a
  data_dir, of a second copy of dataset `name` built from `folder`."""
  base = os.path.basename((folder or "default").rstrip(os.sep))
  return name.replace("/", "_") + FOLDER_SEPARATOR + base


def place(entries: Sequence[tuple[str, str | None]], data_dir: str, field: str) -> list[DatasetRef]:
  """Where each (name, folder) of a list is built (module doc): `data_dir`, or its own
  data dir under it for a second copy of one name.

  Raises:
    errors.UserError: one dataset twice (the same name and folder, or two folders of
      one base name).
  """
  owner: dict[str, str | None] = {}  # the folder each name is built from in data_dir
  refs = []
  for name, folder in entries:
    here = data_dir
    if owner.setdefault(name, folder) != folder:
      here = os.path.join(data_dir, own_data_dir(name, folder))
    ref = DatasetRef(name, here, folder)
    if any(r.name == name and r.data_dir == here for r in refs):
      raise errors.UserError(
        f"{field} lists {name!r} from {folder or 'the default folder'} twice"
        + ("" if ref in refs else " (two folders of one base name)"),
        hint="list each set once; two copies of one dataset need folders of different names",
      )
    refs.append(ref)
  return refs
