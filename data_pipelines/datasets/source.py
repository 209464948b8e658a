"""Random access to the built ReID datasets, without TensorFlow.

    build("market1501", data_dir, manual_dir)          # once: prepares if not built
    source = load_source("market1501", "train", data_dir)
    len(source); source[i] -> {"image": b"\xff\xd8...", "person_id": 3,
                               "camera_id": 0, "file_name": "0002_c1s1_000451_03.jpg"}
    num_train_identities("market1501", data_dir) -> 751

`name` is a TFDS name with optional config, e.g. 'msmt17/v2' or 'cuhk03_np/labeled'.
Records keep the image **encoded** (JPEG, or PNG for CUHK03-NP): TFDS decoding is
skipped (`tfds.decode.SkipDecoding`); the input pipeline decodes with PIL.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

import data_pipelines.datasets  # noqa: F401  (registers the builders)
from data_pipelines.datasets import reid_builder
from fsaf_jax.core import errors, paths

# The datasets this package builds (TFDS names with their configs).
DATASETS = (
  "market1501",
  "dukemtmc_reid",
  "msmt17/v1",
  "msmt17/v2",
  "cuhk03_np/detected",
  "cuhk03_np/labeled",
)


# TFDS's prefix of the temporary folder a build writes before renaming it into place.
# A run builds its datasets here, under its work dir, when `input.data_dir` is empty
# (train.py: `training.data_setup`); eval.py follows a moved work dir there
# (`evaluation.eval_data`).
WORKDIR_DATA_SUBDIR = "data"
WORKDIR_DATA_DIR = os.path.join(WORKDIR_DATA_SUBDIR, "tfds")
INCOMPLETE_PREFIX = "incomplete."


class DatasetWriteError(OSError):
  """A build could not be written (disk full, quota, file-size limit): one line naming
  the data_dir, the cause and the free space there (the partial build removed)."""


class ManualDirIsAFileError(errors.UserError, NotADirectoryError):
  """manual_dir names a file (e.g. the zip itself) instead of the folder holding it."""


Record = dict[str, Any]


def _expand(path: str | os.PathLike[str]) -> str:
  return paths.resolve(path)


def get_builder(
  name: str, data_dir: str | os.PathLike[str], **builder_kwargs
) -> tfds.core.DatasetBuilder:
  """The TFDS builder `name` ('market1501', 'msmt17/v2', ...) over `data_dir`.

  Raises:
    UserError: `name` is not one of `DATASETS` (or another registered TFDS dataset).
  """
  try:
    return tfds.builder(name, data_dir=_expand(data_dir), **builder_kwargs)
  except (tfds.core.registered.DatasetNotFoundError, ValueError) as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.UserError(
      f"unknown dataset {name!r} ({errors.one_line(str(e)).split('Available')[0].strip()})",
      hint=f"the ReID datasets built here: {', '.join(DATASETS)}",
    ) from e


def _prepared_builder(name: str, data_dir: str | os.PathLike[str]) -> tfds.core.DatasetBuilder:
  builder = get_builder(name, data_dir)
  if not builder.is_prepared():
    raise errors.InputNotFoundError(
      f"Dataset {name!r} is not built in data_dir {_expand(data_dir)} (looked for "
      f"{builder.data_path}). Build it with: python -m data_pipelines.datasets.build "
      f"--dataset={name} --manual_dir=DIR --data_dir={data_dir}"
    )
  return builder


def build(
  name: str,
  data_dir: str | os.PathLike[str],
  manual_dir: str | os.PathLike[str] | None = None,
  *,
  skip_corrupt: bool = False,
  overwrite: bool = False,
) -> tfds.core.DatasetBuilder:
  """Builds dataset `name` into `data_dir` from `manual_dir` unless already built.

  An already built dataset is used as it is when `manual_dir` holds the same files (the
  same relative paths and sizes as at its build: `metadata['source_fingerprint']`), or
  holds no copy of the dataset (the download may be gone once built). When `manual_dir`
  holds another copy (other files or sizes), the build is refused, naming both
  sources, unless `overwrite`, which builds again and then deletes the old build (a
  failed rebuild leaves the old build in place).

  Args:
    name: TFDS name, optionally with config ('msmt17/v1').
    data_dir: where the ArrayRecord files go.
    manual_dir: folder holding the download (extracted folder or zip archive); None:
      TFDS's default `<data_dir>/downloads/manual`.
    skip_corrupt: leave out undecodable images (counted in the metadata) instead of
      failing.
    overwrite: rebuild when the built dataset came from another source.

  Returns:
    The prepared builder.

  Raises:
    OutputExistsError: built from another source and not `overwrite`.
    InputNotFoundError: not built, and `manual_dir` is missing, empty or holds no copy
      of the dataset (the hint gives the download instructions).
    UserError: `manual_dir` is a file, bad file names, corrupt images, ...
  """
  builder = get_builder(name, data_dir, skip_corrupt=skip_corrupt)
  made = _folders_tfds_makes(builder, data_dir)
  existed = {f for f in made if os.path.exists(f)}
  try:
    with _build_lock(_expand(data_dir), name):
      remove_partial_builds(builder)  # of builders that died: none other is running
      try:
        return _build_locked(name, data_dir, manual_dir, skip_corrupt, overwrite)
      finally:
        remove_partial_builds(builder)
  except BaseException as e:
    for folder in made:  # deepest first: the empty folders a failed build leaves
      if folder not in existed and os.path.isdir(folder) and not any(os.scandir(folder)):
        os.rmdir(folder)
    if is_out_of_space(e):
      cause = " ".join(f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}".split())
      raise DatasetWriteError(
        f"building {name} into {_expand(data_dir)} failed: {cause}; "
        f"{paths.free_space(_expand(data_dir))} there (the partial build was removed)"
      ) from None
    raise


def _build_locked(
  name: str,
  data_dir: str | os.PathLike[str],
  manual_dir: str | os.PathLike[str] | None,
  skip_corrupt: bool,
  overwrite: bool,
) -> tfds.core.DatasetBuilder:
  """`build`, holding the data_dir's build lock."""
  builder = get_builder(name, data_dir, skip_corrupt=skip_corrupt)  # as it is now
  instructions = builder.MANUAL_DOWNLOAD_INSTRUCTIONS or ""
  if manual_dir is not None:
    manual_dir = _expand(manual_dir)
    if os.path.isfile(manual_dir):
      raise ManualDirIsAFileError(
        f"manual_dir {manual_dir} is a file: pass the folder that holds the archive or "
        "the extracted dataset",
        hint=instructions or None,
      )
  manual = manual_dir or os.path.join(_expand(data_dir), "downloads", "manual")
  replaced = None  # the previous build, moved aside until the new one is complete
  if builder.is_prepared() and _has_entries(manual):
    if _other_source(builder, name, data_dir, manual, overwrite):
      built = os.fspath(builder.data_path)
      replaced = f"{built}.replaced"
      shutil.rmtree(replaced, ignore_errors=True)
      os.rename(built, replaced)
      builder = get_builder(name, data_dir, skip_corrupt=skip_corrupt)
  if not builder.is_prepared() and not _has_entries(manual):
    raise errors.InputNotFoundError(
      f"manual_dir {manual} does not exist or is empty: put the {name} download there "
      "(zip or extracted folder)",
      hint=instructions or None,
    )
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  try:
    builder.download_and_prepare(download_config=config)
  except BaseException:
    if replaced is not None:  # a failed rebuild leaves the previous build as it was
      shutil.rmtree(os.fspath(builder.data_path), ignore_errors=True)
      os.rename(replaced, os.fspath(builder.data_path))
      logging.warning("%s: rebuild failed; the previous build is left in place", name)
    raise
  if replaced is not None:
    shutil.rmtree(replaced)
  return builder


@contextlib.contextmanager
def _build_lock(data_dir: str, name: str) -> Iterator[None]:
  """Holds the exclusive build lock of `data_dir` (created if missing) for the block.

  The lock is an `flock` on the data_dir folder itself (no lock file is left behind;
  the system drops it when its holder dies). A second build into the same data_dir (a
  second build command, two train.py runs started together) waits, with one log line,
  and then finds the dataset built. A remote data_dir (gs://) is not locked.
  """
  if paths.is_remote(data_dir):
    yield
    return
  os.makedirs(data_dir, exist_ok=True)
  fd = os.open(data_dir, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.warning(
        "%s: another build into %s is running; waiting for it to finish", name, data_dir
      )
      fcntl.flock(fd, fcntl.LOCK_EX)
    yield
  finally:
    os.close(fd)  # releases the lock


def remove_partial_builds(builder: tfds.core.DatasetBuilder) -> list[str]:
  """Removes the `incomplete.*` folders TFDS left beside `builder`'s version folder
  (a build killed before its end). Call only holding the data_dir's build lock: a
  live build (which holds it) is then not among them.

  Returns:
    The folders removed.
  """
  data_path = os.fspath(builder.data_path)
  parent, version = os.path.dirname(data_path), os.path.basename(data_path)
  removed = []
  if os.path.isdir(parent):
    for entry in os.scandir(parent):
      if entry.name.startswith(INCOMPLETE_PREFIX) and entry.name.endswith(f"_{version}"):
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
  if removed:
    logging.info(
      "Removed %d partial build folder(s) of an interrupted build: %s", len(removed), removed
    )
  return removed


def is_out_of_space(error: BaseException) -> bool:
  """Whether `error` says a write ran out of room: the disk full (ENOSPC), the user's
  quota (EDQUOT) or the file-size limit (EFBIG, `ulimit -f`); an OSError with that errno
  or a wrapped one whose message says so (array_record's RuntimeError 'write() failed:
  No space left on device')."""
  codes = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
  if isinstance(error, OSError) and error.errno in codes:
    return True
  return any(os.strerror(code) in str(error) for code in codes)


def check_built_from(
  name: str, data_dir: str | os.PathLike[str], manual_dir: str | os.PathLike[str]
) -> None:
  """Checks that the build of `name` in `data_dir` was made from the copy `manual_dir`
  holds (nothing to check when not built, or when `manual_dir` holds no copy).

  Raises:
    OutputExistsError: it was built from another copy (both named).
  """
  builder = get_builder(name, data_dir)
  manual = _expand(manual_dir)
  if builder.is_prepared() and _has_entries(manual):
    _other_source(builder, name, data_dir, manual, overwrite=False)


def ensure_built(
  name: str, data_dir: str | os.PathLike[str], manual_dir: str | os.PathLike[str] | None
) -> None:
  """Builds dataset `name` into `data_dir` unless built; a build already there is checked
  against `manual_dir` when one is given (`build`: one made from another copy of the
  dataset is refused, as the build command refuses it).

  Raises:
    What `build` raises.
  """
  if not get_builder(name, data_dir).is_prepared():
    logging.info("Building the TFDS dataset %s into %s", name, _expand(data_dir))
  elif not manual_dir:
    return
  build(name, data_dir, manual_dir or None)


def _folders_tfds_makes(builder: tfds.core.DatasetBuilder, data_dir: Any) -> list[str]:
  """Folders a build creates (data_dir, the dataset's, downloads/extracted), deepest first."""
  root = _expand(data_dir)
  folders = [os.path.join(root, "downloads", "extracted"), os.path.join(root, "downloads")]
  folder = os.path.dirname(os.fspath(builder.data_path))
  while len(folder) > len(root):
    folders.append(folder)
    folder = os.path.dirname(folder)
  return [*folders, root]


def _has_entries(folder: str) -> bool:
  return os.path.isdir(folder) and any(os.scandir(folder))


def _other_source(
  builder: tfds.core.DatasetBuilder, name: str, data_dir: Any, manual: str, overwrite: bool
) -> bool:
  """Whether prepared `builder` was built from another source than `manual` holds.

  Raises:
    OutputExistsError: it was, and not `overwrite`.
  """
  if not isinstance(builder, reid_builder.ReidBuilder):
    return False
  metadata = builder.info.metadata
  try:
    location, fingerprint = builder.source_fingerprint(manual)
  except errors.InputNotFoundError:
    logging.info("%s: manual_dir %s holds no copy; using the built %s", name, manual, name)
    return False
  saved = metadata.get("source_fingerprint")
  if saved is not None:
    if dict(saved) == fingerprint:
      return False
    old = f"{metadata.get('source')} ({saved['num_files']} files, {saved['num_bytes']} bytes)"
  else:  # built before fingerprints were recorded: compare the locations
    if metadata.get("source") == location:
      return False
    old = f"{metadata.get('source')}"
  new = f"{location} ({fingerprint['num_files']} files, {fingerprint['num_bytes']} bytes)"
  if overwrite:
    logging.warning(
      "%s: rebuilding %s from %s (was built from %s)", name, builder.data_path, new, old
    )
    return True
  raise errors.OutputExistsError(
    f"data_dir {_expand(data_dir)} already holds {name} built from {old}; manual_dir {manual} "
    f"holds another copy, {new} (other files or sizes): the built one would be used and the "
    "new source ignored",
    hint=f"rebuild it from the new source with python -m data_pipelines.datasets.build "
    f"--dataset={name} --manual_dir={manual} --data_dir={data_dir} --overwrite, or use another "
    "data_dir",
  )


@dataclasses.dataclass
class ReidSource(Sequence):
  """Random-access source of one split: records with the image still encoded.

  Wraps the TFDS ArrayRecord data source; picklable (for grain worker processes).
  """

  tfds_source: Any  # tfds.core.data_sources.ArrayRecordDataSource

  def __len__(self) -> int:
    return len(self.tfds_source)

  def __getitem__(self, index: int) -> Record:  # type: ignore[override]
    if isinstance(index, slice):
      raise TypeError("ReidSource does not support slicing; index with ints.")
    return _to_record(self.tfds_source[index])

  def __getitems__(self, indices: Iterable[int]) -> list[Record]:
    return [_to_record(r) for r in self.tfds_source.__getitems__(list(indices))]

  def __iter__(self) -> Iterator[Record]:
    for i in range(len(self)):
      yield self[i]

  def __repr__(self) -> str:
    return f"ReidSource({self.tfds_source!r}, len={len(self)})"


def _to_record(example: dict[str, Any]) -> Record:
  file_name = example["file_name"]
  return {
    "image": bytes(example["image"]),
    "person_id": int(example["person_id"]),
    "camera_id": int(example["camera_id"]),
    "file_name": file_name.decode("utf-8") if isinstance(file_name, bytes) else str(file_name),
  }


def load_source(name: str, split: str, data_dir: str | os.PathLike[str]) -> ReidSource:
  """Random-access source of `split` ('train' | 'query' | 'gallery') of built `name`.

  Raises:
    FileNotFoundError: the dataset is not built in `data_dir` (says how to build it).
    ValueError: unknown split.
  """
  if split not in reid_builder.SPLITS:
    raise ValueError(
      f"Unknown split {split!r} for {name!r}: expected one of {reid_builder.SPLITS}."
    )
  builder = _prepared_builder(name, data_dir)
  tfds_source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  return ReidSource(tfds_source)


def num_train_identities(name: str, data_dir: str | os.PathLike[str]) -> int:
  """Number of train identities (labels are 0..N-1) of built `name`."""
  return int(_prepared_builder(name, data_dir).info.metadata["num_train_identities"])


def metadata(name: str, data_dir: str | os.PathLike[str]) -> dict[str, Any]:
  """The build metadata of `name` (see `reid_builder`): id mapping, per-split stats."""
  return dict(_prepared_builder(name, data_dir).info.metadata.items())


def junk_pids(name: str, data_dir: str | os.PathLike[str]) -> tuple[int, ...]:
  """The pids of `name`'s query / gallery that are no identity: junk boxes (-1) and, for
  datasets with Market-1501's semantics (`ReidBuilder.HAS_JUNK_AND_DISTRACTORS`), the
  distractors (0). torchreid's `_junk_pids`, left out of training under combineall."""
  builder = get_builder(name, data_dir)
  if getattr(builder, "HAS_JUNK_AND_DISTRACTORS", False):
    return (reid_builder.JUNK_PID, reid_builder.DISTRACTOR_PID)
  return (reid_builder.JUNK_PID,)
