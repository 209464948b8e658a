"""A dataset as distributed, read from a folder or straight from its zip archive.

Builders find the dataset inside TFDS's `manual_dir` with `find_dataset_root`: the
folder itself, a sub-folder (e.g. `manual_dir/Market-1501-v15.09.15/`) or a `.zip`
archive lying there (e.g. `manual_dir/Market-1501-v15.09.15.zip`), recognised by the
marker paths the dataset must contain (e.g. `bounding_box_train`, `query`, ...).
Both kinds of root answer the same small interface (`DatasetRoot`) with POSIX paths
relative to the dataset root.
"""

from __future__ import annotations

import abc
import collections
import os
import pathlib
import posixpath
import zipfile
from collections.abc import Sequence

from fsaf_jax.core import errors

# Operating-system litter found in folders and archives of real releases (Market-1501
# ships a `Thumbs.db` in its image folders): ignored when listing a folder's images.
IGNORED_FILE_NAMES = frozenset({"Thumbs.db", "desktop.ini", ".DS_Store"})
_IGNORED_DIR_NAMES = frozenset({"__MACOSX"})
# Sub-folders searched below manual_dir for the dataset root / archives.
_MAX_SEARCH_DEPTH = 2


def is_ignored(file_name: str) -> bool:
  """Whether `file_name` is OS metadata (Thumbs.db, .DS_Store, ._AppleDouble, ...)."""
  return file_name in IGNORED_FILE_NAMES or file_name.startswith(".")


class DatasetRoot(abc.ABC):
  """Read-only view of one dataset's top folder (on disk or inside a zip)."""

  @abc.abstractmethod
  def is_dir(self, relpath: str) -> bool:
    """Whether `relpath` (POSIX, relative to the root) is a folder."""

  @abc.abstractmethod
  def is_file(self, relpath: str) -> bool:
    """Whether `relpath` is a regular file."""

  @abc.abstractmethod
  def list_files(self, relpath: str) -> list[str]:
    """Sorted names of the files directly in folder `relpath` (no sub-folders)."""

  @abc.abstractmethod
  def read_bytes(self, relpath: str) -> bytes:
    """Content of file `relpath`."""

  @abc.abstractmethod
  def size(self, relpath: str) -> int:
    """Size in bytes of file `relpath` (uncompressed, inside an archive)."""

  @abc.abstractmethod
  def location(self, relpath: str = "") -> str:
    """Human-readable location of `relpath` for messages (path or `zip:member`)."""

  def read_text(self, relpath: str) -> str:
    return self.read_bytes(relpath).decode("utf-8")


class DirRoot(DatasetRoot):
  """A dataset root that is a folder on disk."""

  def __init__(self, path: os.PathLike[str] | str):
    self.path = pathlib.Path(path)

  def _p(self, relpath: str) -> pathlib.Path:
    return self.path.joinpath(*relpath.split("/")) if relpath else self.path

  def is_dir(self, relpath: str) -> bool:
    return self._p(relpath).is_dir()

  def is_file(self, relpath: str) -> bool:
    return self._p(relpath).is_file()

  def list_files(self, relpath: str) -> list[str]:
    with os.scandir(self._p(relpath)) as it:
      return sorted(e.name for e in it if e.is_file())

  def read_bytes(self, relpath: str) -> bytes:
    return self._p(relpath).read_bytes()

  def size(self, relpath: str) -> int:
    return self._p(relpath).stat().st_size

  def location(self, relpath: str = "") -> str:
    return str(self._p(relpath))

  def __repr__(self) -> str:
    return f"DirRoot({str(self.path)!r})"


class ZipRoot(DatasetRoot):
  """A dataset root inside a zip archive, at member prefix `prefix` ('' or 'a/b')."""

  def __init__(
    self,
    zip_path: os.PathLike[str] | str,
    prefix: str = "",
    index: tuple[dict[str, set[str]], set[str]] | None = None,
  ):
    self.zip_path = pathlib.Path(zip_path)
    self.prefix = prefix.strip("/")
    self._zip: zipfile.ZipFile | None = None
    self._files, self._dirs = index if index is not None else _index_zip(self.zip_path)

  def _member(self, relpath: str) -> str:
    return posixpath.join(self.prefix, relpath).strip("/") if relpath else self.prefix

  def _archive(self) -> zipfile.ZipFile:
    if self._zip is None:
      self._zip = zipfile.ZipFile(self.zip_path)
    return self._zip

  def is_dir(self, relpath: str) -> bool:
    return self._member(relpath) in self._dirs

  def is_file(self, relpath: str) -> bool:
    folder, name = posixpath.split(self._member(relpath))
    return name in self._files.get(folder, ())

  def list_files(self, relpath: str) -> list[str]:
    return sorted(self._files.get(self._member(relpath), ()))

  def read_bytes(self, relpath: str) -> bytes:
    return self._archive().read(self._member(relpath))

  def size(self, relpath: str) -> int:
    return self._archive().getinfo(self._member(relpath)).file_size

  def location(self, relpath: str = "") -> str:
    return f"{self.zip_path}:{self._member(relpath)}"

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_zip"] = None
    return state

  def __repr__(self) -> str:
    return f"ZipRoot({str(self.zip_path)!r}, prefix={self.prefix!r})"


def _index_zip(zip_path: pathlib.Path) -> tuple[dict[str, set[str]], set[str]]:
  """Returns ({folder: {file names}}, {folders}) of a zip's members."""
  try:
    with zipfile.ZipFile(zip_path) as zf:
      names = zf.namelist()
  except zipfile.BadZipFile as e:
    raise errors.UserError(f"{zip_path} is not a readable zip archive: {e}") from e
  files: dict[str, set[str]] = collections.defaultdict(set)
  dirs = {""}
  for name in names:
    if name.startswith("__MACOSX/"):
      continue
    if name.endswith("/"):
      folder, base = name.rstrip("/"), None
    else:
      folder, base = posixpath.split(name)
      files[folder].add(base)
    while folder and folder not in dirs:  # zips may omit explicit folder entries
      dirs.add(folder)
      folder = posixpath.dirname(folder)
  return dict(files), dirs


def _candidate_dirs(manual_dir: pathlib.Path) -> list[pathlib.Path]:
  """manual_dir and its sub-folders down to _MAX_SEARCH_DEPTH, breadth first."""
  out, level = [manual_dir], [manual_dir]
  for _ in range(_MAX_SEARCH_DEPTH):
    nxt = []
    for d in level:
      try:
        with os.scandir(d) as it:
          nxt.extend(
            pathlib.Path(e.path)
            for e in it
            if e.is_dir() and not is_ignored(e.name) and e.name not in _IGNORED_DIR_NAMES
          )
      except OSError:
        continue
    nxt.sort()
    out.extend(nxt)
    level = nxt
  return out


def find_dataset_root(
  manual_dir: os.PathLike[str] | str,
  markers: Sequence[str],
  *,
  dataset: str,
  name_hints: Sequence[str] = (),
  instructions: str = "",
) -> DatasetRoot:
  """Finds the one dataset root under `manual_dir` holding every path in `markers`.

  Extracted folders (manual_dir itself or a sub-folder up to two levels down) win
  over `.zip` archives (in manual_dir or one level down, any member prefix). When
  several roots qualify, those whose name contains one of `name_hints`
  (case-insensitive) are preferred.

  Args:
    manual_dir: folder the user put the download in.
    markers: POSIX paths relative to the root that must exist (folders or files).
    dataset: dataset name for messages.
    name_hints: lowercase substrings of the expected root / archive name.
    instructions: appended to the error when nothing is found.

  Returns:
    The dataset root.

  Raises:
    InputNotFoundError (a FileNotFoundError and UserError): nothing under manual_dir
      holds all markers (the message lists partial matches; the hint, the instructions).
    UserError: several equally good roots.
  """
  manual_dir = pathlib.Path(manual_dir).expanduser()
  dirs = _candidate_dirs(manual_dir)
  found: list[DatasetRoot] = []
  partial: list[str] = []
  for d in dirs:
    root = DirRoot(d)
    present = [m for m in markers if root.is_dir(m) or root.is_file(m)]
    if len(present) == len(markers):
      found.append(root)
    elif present:
      partial.append(f"{d} (missing {[m for m in markers if m not in present]})")
  if not found:
    top = [d for d in dirs if d == manual_dir or d.parent == manual_dir]
    zips = sorted(p for d in top for p in d.glob("*.zip") if p.is_file())
    for zp in zips:
      index = _index_zip(zp)
      for prefix in sorted(index[1]):
        root = ZipRoot(zp, prefix, index=index)
        present = [m for m in markers if root.is_dir(m) or root.is_file(m)]
        if len(present) == len(markers):
          found.append(root)
        elif present and markers[0] in present:
          partial.append(f"{root.location()} (missing {[m for m in markers if m not in present]})")
  if not found:
    msg = (
      f"No {dataset} found in manual_dir {manual_dir}: expected {list(markers)} in it, in "
      "a sub-folder, or in a .zip archive there."
    )
    if partial:
      msg += " Incomplete candidates: " + "; ".join(partial) + "."
    raise errors.InputNotFoundError(msg, hint=instructions or None)
  if len(found) > 1 and name_hints:
    hinted = [r for r in found if any(h in _root_name(r).lower() for h in name_hints)]
    found = hinted or found
  if len(found) > 1:
    raise errors.UserError(
      f"Several {dataset} copies found under manual_dir {manual_dir}: "
      f"{[r.location() for r in found]}. Point manual_dir at the one to use."
    )
  return found[0]


def _root_name(root: DatasetRoot) -> str:
  if isinstance(root, ZipRoot):
    return f"{root.zip_path.name}/{root.prefix}"
  assert isinstance(root, DirRoot)
  return root.path.name
