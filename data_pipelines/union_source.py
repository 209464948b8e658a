"""Several ReID training sets as one random-access training source: their union.

fast-reid's `DATASETS.NAMES` list, torchreid's `sources=[...]`: the training images of
every set, with identities and cameras offset so that two sets never share a label or
a camera. Set `i` (in the given order) gets

    label  = label_offset_i  + its own label    (label_offset_i  = classes of sets 0..i-1)
    camera = camera_offset_i + its own camera   (camera_offset_i = cameras of sets 0..i-1)

so the labels are 0..C-1 over the union, C = the sum of the sets' classes (the
classifier width), and a set's cameras count as `max camera id + 1` of the images it
contributes (camera ids are 0-based).

`combineall` (torchreid's `combine_all`, the "all" protocol): a set's query and gallery
images join its training images. Their identities are relabelled after the set's
training identities, in sorted order of the original pid over query and gallery
together (the two splits share one pid space). As torchreid does, images whose pid is
junk or a distractor (Market-1501's -1 and 0, `SetSplits.junk_pids`) stay out; junk
boxes are already dropped when the dataset is built, so in practice the distractors
(pid 0 of Market-1501's gallery) are what is left out. Datasets without such pids
(DukeMTMC-reID, MSMT17, CUHK03-NP) give all their query and gallery images.

    splits = [SetSplits("market1501", SplitLabels(train, pids, cams)), ...]
    source, counts = union_of(splits)
    source[i] -> {"image": ..., "person_id": union label, "camera_id": union camera, ...}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fsaf_jax.core import errors


@dataclasses.dataclass(frozen=True)
class SplitLabels:
  """One split of one set as read: its records and their labels.

  Attributes:
    source: random-access source (`data_pipelines.source_records`).
    person_ids: `person_id` of every record, int [len(source)].
    camera_ids: `camera_id` of every record (0-based), int [len(source)].
  """

  source: Any
  person_ids: np.ndarray
  camera_ids: np.ndarray


@dataclasses.dataclass(frozen=True)
class SetSplits:
  """What one set contributes to the union.

  Attributes:
    name: the set's name for messages and the run card (e.g. 'market1501').
    train: its training split; labels 0..N-1 (relabelled by the dataset builder).
    extra: the splits joining the training images under combineall (query, gallery,
      whose pids are the dataset's own); () without combineall.
    junk_pids: pids of `extra` left out (junk, distractors).
  """

  name: str
  train: SplitLabels
  extra: tuple[SplitLabels, ...] = ()
  junk_pids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class SetCounts:
  """One set's share of the union (the run card lists them).

  Attributes:
    name: the set's name.
    ids: classes it contributes (training ids, plus the query/gallery ids under
      combineall); its labels are `label_offset .. label_offset + ids - 1`.
    images: images it contributes.
    cameras: cameras it contributes (`max camera id + 1`); its cameras are
      `camera_offset .. camera_offset + cameras - 1`.
    label_offset, camera_offset: added to its own labels / cameras.
    joined_ids, joined_images: of `ids` / `images`, those from query and gallery
      (combineall; 0 otherwise).
    left_out_images: query / gallery images left out as junk or distractors.
  """

  name: str
  ids: int
  images: int
  cameras: int
  label_offset: int
  camera_offset: int
  joined_ids: int = 0
  joined_images: int = 0
  left_out_images: int = 0


class UnionSource(Sequence):
  """Random-access source over the records of several sources, relabelled.

  Record `i` is its source record with `person_id` and `camera_id` replaced by the
  union's. Picklable when its sources are (grain worker processes).
  """

  def __init__(
    self,
    sources: Sequence[Any],
    part: np.ndarray,
    record: np.ndarray,
    person_ids: np.ndarray,
    camera_ids: np.ndarray,
  ):
    """Args (int arrays [N], one entry per union record):
    sources: the underlying sources.
    part: which of `sources` the record comes from.
    record: its index in that source.
    person_ids, camera_ids: its union label and camera.
    """
    self._sources = tuple(sources)
    self._part = np.asarray(part, np.int64)
    self._record = np.asarray(record, np.int64)
    self.person_ids = np.asarray(person_ids, np.int64)
    self.camera_ids = np.asarray(camera_ids, np.int64)

  def __len__(self) -> int:
    return len(self._record)

  def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
    if isinstance(index, slice):
      raise TypeError("UnionSource does not support slicing; index with ints.")
    record = dict(self._sources[self._part[index]][int(self._record[index])])
    record["person_id"] = int(self.person_ids[index])
    record["camera_id"] = int(self.camera_ids[index])
    return record

  def __getitems__(self, indices: Iterable[int]) -> list[dict[str, Any]]:
    return [self[i] for i in indices]

  def __repr__(self) -> str:
    return f"UnionSource({len(self._sources)} sources, len={len(self)})"


def _num_cameras(camera_ids: np.ndarray) -> int:
  return int(camera_ids.max()) + 1 if len(camera_ids) else 0


def _joined(splits: SetSplits) -> tuple[list[np.ndarray], np.ndarray, int]:
  """Under combineall: (kept record indices per extra split, their sorted real pids,
  images left out)."""
  kept = [~np.isin(s.person_ids, splits.junk_pids) for s in splits.extra]
  pids = [np.asarray(s.person_ids, np.int64)[k] for s, k in zip(splits.extra, kept, strict=True)]
  left_out = sum(int((~k).sum()) for k in kept)
  return (
    [np.flatnonzero(k) for k in kept],
    np.unique(np.concatenate([np.zeros(0, np.int64), *pids])),
    left_out,
  )


def union_of(sets: Sequence[SetSplits]) -> tuple[UnionSource, list[SetCounts]]:
  """The union of `sets` (module doc): one source, and each set's counts in order.

  Raises:
    errors.UserError: a set's training labels are not 0..N-1 (not relabelled by a
      dataset builder), or a set has no training image.
  """
  sources, parts, records, labels, cameras, counts = [], [], [], [], [], []
  label_offset = camera_offset = 0
  for splits in sets:
    train = splits.train
    pids = np.asarray(train.person_ids, np.int64)
    if not len(pids):
      raise errors.UserError(f"training set {splits.name!r} has no training image")
    num_train_ids = int(pids.max()) + 1
    if pids.min() < 0 or len(np.unique(pids)) != num_train_ids:
      raise errors.UserError(
        f"training set {splits.name!r}: training labels must be 0..N-1 (as the dataset "
        f"builders relabel them), got {len(np.unique(pids))} ids in {pids.min()}..{pids.max()}"
      )
    kept, joined_pids, left_out = _joined(splits)
    set_labels = [pids]
    set_cameras = [np.asarray(train.camera_ids, np.int64)]
    for part, split in enumerate((train, *splits.extra)):
      index = np.arange(len(split.source)) if part == 0 else kept[part - 1]
      sources.append(split.source)
      parts.append(np.full(len(index), len(sources) - 1))
      records.append(index)
      if part:
        own = np.asarray(split.person_ids, np.int64)[index]
        set_labels.append(num_train_ids + np.searchsorted(joined_pids, own))
        set_cameras.append(np.asarray(split.camera_ids, np.int64)[index])
    set_labels, set_cameras = np.concatenate(set_labels), np.concatenate(set_cameras)
    num_cameras = _num_cameras(set_cameras)
    labels.append(label_offset + set_labels)
    cameras.append(camera_offset + set_cameras)
    num_ids = num_train_ids + len(joined_pids)
    counts.append(
      SetCounts(
        name=splits.name,
        ids=num_ids,
        images=len(set_labels),
        cameras=num_cameras,
        label_offset=label_offset,
        camera_offset=camera_offset,
        joined_ids=len(joined_pids),
        joined_images=len(set_labels) - len(pids),
        left_out_images=left_out,
      )
    )
    label_offset += num_ids
    camera_offset += num_cameras
  source = UnionSource(
    sources,
    np.concatenate(parts),
    np.concatenate(records),
    np.concatenate(labels),
    np.concatenate(cameras),
  )
  return source, counts
