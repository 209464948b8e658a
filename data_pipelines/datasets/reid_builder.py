"""Shared TFDS builder logic for person-ReID datasets read from a manual download.

A concrete builder says where the images of each split are (`_markers`, `_list_split`)
and how names map to (pid, camera); this base class does the rest:

- finds the dataset in `manual_dir` (extracted folder or zip archive),
- drops junk boxes (pid -1) everywhere and distractors (pid 0) outside the gallery,
  for datasets that have them (`HAS_JUNK_AND_DISTRACTORS`),
- decodes every image once to catch corrupt or truncated files (the build fails
  naming the file, or with `skip_corrupt=True` leaves them out and counts them),
- relabels the train identities 0..N-1 in sorted order of the original pid (query and
  gallery keep the original ids) and stores the mapping in `info.metadata`,
- writes the shipped image bytes unchanged to ArrayRecord, in file-name order.

Records: `image` (encoded JPEG/PNG as shipped), `person_id` int32, `camera_id` int32
(0-based), `file_name` (bare file name). Metadata (`builder.info.metadata`):
`num_train_identities`, `train_label_to_pid` (list: label -> original pid), `splits`
({split: {num_images, num_ids, num_junk_dropped, num_distractors_dropped,
skipped_corrupt (file names)}}), `source` (where the build read from) and
`source_fingerprint` ({num_files, num_bytes, sha256} of the listed files' relative paths
and sizes: `source_fingerprint()` computes it for another manual_dir, so that a build
into a data_dir holding the dataset built from another source can be refused).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core import shuffle as tfds_shuffle

from data_pipelines.datasets import image_check, manual_files
from fsaf_jax.core import errors

SPLITS = ("train", "query", "gallery")
JUNK_PID = -1
DISTRACTOR_PID = 0
# The TFDS writer sorts each split through a `Shuffler` that spills to disk through
# `tf.io.gfile` (i.e. needs TensorFlow) beyond 1 GB. Splits are held in memory instead
# (MSMT17's gallery is ~80k images): raised for the duration of a build.
_SPLIT_MEMORY_BUFFER_BYTES = 1 << 40

ParseFn = Callable[[str], tuple[int, int]]
# Published (ids, images) per split; None where not compared.
SplitStats = dict[str, tuple[int | None, int]]


@dataclasses.dataclass(frozen=True)
class ImageEntry:
  """One image of a split before writing: where it is and what the name says."""

  file_name: str  # bare name, stored in the record
  relpath: str  # POSIX path relative to the dataset root
  pid: int  # original person id
  camid: int  # 0-based camera


class ReidBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: person-ReID dataset (train / query / gallery) from manual_dir."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  IMAGE_FORMAT = "jpeg"  # as shipped: 'jpeg' or 'png'
  HAS_JUNK_AND_DISTRACTORS = False  # Market-1501 semantics of pid -1 / pid 0
  ROOT_NAME_HINTS: tuple[str, ...] = ()  # lowercase substrings of the top folder name
  # {config name (None without configs): {split: (ids, images)}} from the papers.
  PUBLISHED_STATS: dict[str | None, SplitStats] = {}
  DESCRIPTION = ""
  HOMEPAGE = ""
  CITATION = ""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """The builder's source file.

    Overrides TFDS 4.9.10's lookup, which on Python >= 3.9 references the
    `importlib_resources` backport (not a dependency there) for builders defined in a
    package, and fails with ModuleNotFoundError at `download_and_prepare`.
    """
    return epath.Path(inspect.getfile(cls))

  def __init__(self, *, skip_corrupt: bool = False, **kwargs):
    """Creates the builder.

    Args:
      skip_corrupt: leave out (and count, in the metadata) images that do not decode
        instead of failing the build.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, config, ...);
        `file_format` defaults to 'array_record'.
    """
    self._skip_corrupt = skip_corrupt
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  # --- What each dataset defines. --------------------------------------------------
  # Market-1501 style layout: one folder per split, identity and camera in the name.
  # Datasets laid out otherwise override `_markers` and `_list_split`.
  SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
  PARSE_NAME: ParseFn | None = None  # staticmethod(naming.parse_..._name)

  def _root_name_hints(self) -> tuple[str, ...]:
    """Lowercase substrings of the dataset's top folder / archive name."""
    return self.ROOT_NAME_HINTS

  def _split_folder(self, split: str) -> str:
    """Folder of `split`, relative to the dataset root."""
    return self.SPLIT_FOLDERS[split]

  def _markers(self) -> list[str]:
    """Paths (relative to the dataset root) that identify the root; first = train."""
    return [self._split_folder(split) for split in SPLITS]

  def _list_split(self, root: manual_files.DatasetRoot, split: str) -> list[ImageEntry]:
    """All images of `split` as shipped (junk included), sorted by file name."""
    assert self.PARSE_NAME is not None, f"{type(self).__name__} must set PARSE_NAME"
    return self._list_folder(root, self._split_folder(split), self.PARSE_NAME, split)

  # --- Helpers for the implementations. ---------------------------------------------

  @property
  def dataset_title(self) -> str:
    name = self.name
    if self.builder_config is not None:
      name += f"/{self.builder_config.name}"
    return name

  def _list_folder(
    self, root: manual_files.DatasetRoot, folder: str, parse: ParseFn, split: str
  ) -> list[ImageEntry]:
    """Every file in `folder` (OS litter ignored), parsed with `parse`.

    Raises:
      FileNotFoundError: the folder is missing.
      ValueError: the folder has no images, or a file name does not parse (naming it).
    """
    if not root.is_dir(folder):
      raise errors.InputNotFoundError(
        f"{self.dataset_title}: split {split!r} folder {root.location(folder)} is missing."
      )
    entries = []
    for name in root.list_files(folder):
      if manual_files.is_ignored(name):
        continue
      relpath = f"{folder}/{name}"
      try:
        pid, camid = parse(name)
      except ValueError as e:
        raise errors.UserError(f"{root.location(relpath)}: {e}") from e
      entries.append(ImageEntry(name, relpath, pid, camid))
    if not entries:
      raise errors.UserError(
        f"{self.dataset_title}: split {split!r} has no images: folder "
        f"{root.location(folder)} is empty."
      )
    return entries

  # --- TFDS hooks. --------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(encoding_format=self.IMAGE_FORMAT),
          "person_id": tfds.features.Scalar(
            np.int32, doc="train: label 0..N-1; query/gallery: original pid"
          ),
          "camera_id": tfds.features.Scalar(np.int32, doc="0-based camera index"),
          "file_name": tfds.features.Text(doc="file name as shipped"),
        }
      ),
      homepage=self.HOMEPAGE,
      citation=self.CITATION,
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,
    )

  def _download_and_prepare(self, dl_manager, download_config=None) -> None:
    previous = tfds_shuffle.MAX_MEM_BUFFER_SIZE
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = max(previous, _SPLIT_MEMORY_BUFFER_BYTES)
    try:
      super()._download_and_prepare(dl_manager, download_config)
    finally:
      tfds_shuffle.MAX_MEM_BUFFER_SIZE = previous

  def _find_root(self, manual_dir: str | os.PathLike[str]) -> manual_files.DatasetRoot:
    return manual_files.find_dataset_root(
      manual_dir,  # raises, with the instructions, if missing or empty
      self._markers(),
      dataset=self.dataset_title,
      name_hints=self.ROOT_NAME_HINTS,
      instructions=self.MANUAL_DOWNLOAD_INSTRUCTIONS or "",
    )

  def source_fingerprint(self, manual_dir: str | os.PathLike[str]) -> tuple[str, dict]:
    """(location, fingerprint) of the dataset found in `manual_dir`, reading no image.

    The fingerprint is what the build records as `metadata['source_fingerprint']`.

    Raises:
      InputNotFoundError: `manual_dir` holds no copy of the dataset; UserError: a file
        name off the scheme, an empty split, several copies.
    """
    root = self._find_root(manual_dir)
    listed = {split: self._list_split(root, split) for split in SPLITS}
    return root.location(), fingerprint(root, listed)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = self._find_root(dl_manager.manual_dir)
    logging.info("%s: reading %s", self.dataset_title, root.location())
    entries, stats, listings = {}, {}, {}
    for split in SPLITS:
      listed = self._list_split(root, split)
      listings[split] = listed
      _check_unique_names(listed, root, self.dataset_title, split)
      kept, num_junk, num_distractors = self._drop_junk(listed, split)
      kept, skipped = self._check_images(root, kept, split)
      if not kept:
        raise errors.UserError(
          f"{self.dataset_title}: split {split!r} has no usable images "
          f"({len(listed)} listed, {num_junk} junk, {num_distractors} distractors, "
          f"{len(skipped)} corrupt) in {root.location()}."
        )
      entries[split] = kept
      stats[split] = {
        "num_images": len(kept),
        "num_ids": len({e.pid for e in kept}),
        "num_junk_dropped": num_junk,
        "num_distractors_dropped": num_distractors,
        "skipped_corrupt": skipped,
      }
    train_pids = sorted({e.pid for e in entries["train"]})
    label_of = {pid: label for label, pid in enumerate(train_pids)}
    self.info.metadata.update(
      {
        "num_train_identities": len(train_pids),
        "train_label_to_pid": train_pids,
        "splits": stats,
        "source": root.location(),
        "source_fingerprint": fingerprint(root, listings),
      }
    )
    return {
      split: self._generate_examples(root, entries[split], label_of if split == "train" else None)
      for split in SPLITS
    }

  def _generate_examples(
    self,
    root: manual_files.DatasetRoot,
    entries: list[ImageEntry],
    label_of: dict[int, int] | None,
  ) -> Iterator[tuple[int, dict]]:
    # Integer keys: with disable_shuffling the records are written in key order.
    for key, e in enumerate(entries):
      yield (
        key,
        {
          "image": root.read_bytes(e.relpath),
          "person_id": label_of[e.pid] if label_of is not None else e.pid,
          "camera_id": e.camid,
          "file_name": e.file_name,
        },
      )

  # --- Steps of _split_generators. ----------------------------------------------------

  def _drop_junk(self, entries: list[ImageEntry], split: str) -> tuple[list[ImageEntry], int, int]:
    """Drops pid -1 everywhere and pid 0 outside the gallery (if the dataset has them)."""
    if not self.HAS_JUNK_AND_DISTRACTORS:
      return entries, 0, 0
    num_junk = sum(e.pid == JUNK_PID for e in entries)
    drop_distractors = split != "gallery"
    num_distractors = sum(e.pid == DISTRACTOR_PID for e in entries) if drop_distractors else 0
    kept = [
      e for e in entries if e.pid != JUNK_PID and not (drop_distractors and e.pid == DISTRACTOR_PID)
    ]
    if num_distractors:
      logging.warning(
        "%s: dropped %d distractor images (pid 0) from split %r.",
        self.dataset_title,
        num_distractors,
        split,
      )
    return kept, num_junk, num_distractors

  def _check_images(
    self, root: manual_files.DatasetRoot, entries: list[ImageEntry], split: str
  ) -> tuple[list[ImageEntry], list[str]]:
    """Decodes every image; returns (good entries, skipped file names)."""
    kept, skipped = [], []
    with image_check.strict_pil():
      for e in entries:
        try:
          image_check.check_encoded_image(root.read_bytes(e.relpath), self.IMAGE_FORMAT)
        except image_check.CorruptImageError as err:
          if not self._skip_corrupt:
            raise image_check.CorruptImageError(
              f"Corrupt or truncated image {root.location(e.relpath)} ({err}). Replace it "
              "from the original download, or build with skip_corrupt=True "
              "(--skip_corrupt) to leave it out."
            ) from err
          skipped.append(e.file_name)
          continue
        kept.append(e)
    if skipped:
      logging.warning(
        "%s: skipped %d corrupt images in split %r: %s",
        self.dataset_title,
        len(skipped),
        split,
        skipped,
      )
    return kept, skipped


def fingerprint(
  root: manual_files.DatasetRoot, listed: dict[str, list[ImageEntry]]
) -> dict[str, int | str]:
  """{num_files, num_bytes, sha256 of 'split relpath size' lines} of the listed files."""
  digest = hashlib.sha256()
  num_files = num_bytes = 0
  for split in SPLITS:
    for e in listed[split]:
      size = root.size(e.relpath)
      digest.update(f"{split}\t{e.relpath}\t{size}\n".encode())
      num_files += 1
      num_bytes += size
  return {"num_files": num_files, "num_bytes": num_bytes, "sha256": digest.hexdigest()}


def _check_unique_names(
  entries: list[ImageEntry], root: manual_files.DatasetRoot, title: str, split: str
) -> None:
  seen: dict[str, str] = {}
  for e in entries:
    if e.file_name in seen:
      raise errors.UserError(
        f"{title}: split {split!r} lists file name {e.file_name!r} twice: "
        f"{root.location(seen[e.file_name])} and {root.location(e.relpath)}."
      )
    seen[e.file_name] = e.relpath
