"""union_source: a hand-computed union of two small in-memory sets, combineall with and
without Market-1501's distractor pid, and the errors."""

import pickle

import numpy as np
import pytest

from data_pipelines.union_source import SetSplits, SplitLabels, union_of
from fsaf_jax.core import errors


def split(pids, cams):
  """An in-memory split: records named after their position, with the given labels."""
  source = [
    {"image": b"", "person_id": p, "camera_id": c, "file_name": f"r{i}"}
    for i, (p, c) in enumerate(zip(pids, cams, strict=True))
  ]
  return SplitLabels(source, np.array(pids), np.array(cams))


# Set A: 2 training ids on cameras 0..2; query / gallery pids 7, 9, distractor 0.
A_TRAIN = split([0, 1, 1, 0], [0, 2, 1, 0])
A_QUERY = split([9, 7], [0, 1])
A_GALLERY = split([7, 0, 9, 9], [2, 3, 0, 1])
# Set B: 3 training ids on cameras 0..1; pid 0 is a real identity there.
B_TRAIN = split([2, 0, 1], [1, 0, 0])
B_QUERY = split([0], [1])
B_GALLERY = split([0, 5], [0, 1])


def rows(source):
  return [(r["file_name"], r["person_id"], r["camera_id"]) for r in source]


def test_training_images_offset_per_set():
  source, counts = union_of([SetSplits("a", A_TRAIN), SetSplits("b", B_TRAIN)])
  # A's labels as they are; B's after A's 2 ids, its cameras after A's 3.
  assert rows(source) == [
    ("r0", 0, 0), ("r1", 1, 2), ("r2", 1, 1), ("r3", 0, 0),
    ("r0", 4, 4), ("r1", 2, 3), ("r2", 3, 3),
  ]  # fmt: skip
  assert [(c.ids, c.images, c.cameras, c.label_offset, c.camera_offset) for c in counts] == [
    (2, 4, 3, 0, 0),
    (3, 3, 2, 2, 3),
  ]
  np.testing.assert_array_equal(source.person_ids, [r[1] for r in rows(source)])
  assert rows(pickle.loads(pickle.dumps(source))) == rows(source)  # grain worker processes


def test_combineall_relabels_query_and_gallery_after_the_training_ids():
  a = SetSplits("a", A_TRAIN, (A_QUERY, A_GALLERY), junk_pids=(-1, 0))  # Market semantics
  b = SetSplits("b", B_TRAIN, (B_QUERY, B_GALLERY), junk_pids=(-1,))  # pid 0 is a person
  source, counts = union_of([a, b])
  # A: pids 7, 9 -> 2, 3 (sorted, after its 2 training ids); the distractor left out,
  # and with it camera 3: 3 cameras. B: its own labels 0..2 then pids 0, 5 -> 3, 4, all
  # offset by A's 4 ids; its cameras by A's 3.
  assert rows(source) == [
    ("r0", 0, 0), ("r1", 1, 2), ("r2", 1, 1), ("r3", 0, 0),
    ("r0", 3, 0), ("r1", 2, 1),
    ("r0", 2, 2), ("r2", 3, 0), ("r3", 3, 1),
    ("r0", 6, 4), ("r1", 4, 3), ("r2", 5, 3),
    ("r0", 7, 4),
    ("r0", 7, 3), ("r1", 8, 4),
  ]  # fmt: skip
  assert [(c.ids, c.images, c.cameras, c.joined_ids, c.joined_images) for c in counts] == [
    (4, 9, 3, 2, 5),
    (5, 6, 2, 2, 3),
  ]
  assert [c.left_out_images for c in counts] == [1, 0]
  assert [(c.label_offset, c.camera_offset) for c in counts] == [(0, 0), (4, 3)]


def test_training_labels_must_be_relabelled():
  with pytest.raises(errors.UserError, match="'a': training labels must be 0..N-1"):
    union_of([SetSplits("a", split([0, 2], [0, 0]))])
  with pytest.raises(errors.UserError, match="'b' has no training image"):
    union_of([SetSplits("b", split([], []))])
