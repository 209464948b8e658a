"""Tests of the grain evaluation input pipeline (data_pipelines/eval_pipeline.py)."""

import numpy as np
import pytest

from data_pipelines import augment
from data_pipelines.eval_pipeline import create_eval_batches
from tests.reference.fake_reid_source import make_source


@pytest.mark.parametrize("num_threads", [1, 3])
def test_eval_batches_padded_in_order(num_threads):
  source = make_source([2, 3, 4, 2], image_hw=(16, 8), seed=5)  # 11 records
  batches = list(create_eval_batches(source, 4, (32, 16), num_threads=num_threads))
  assert len(batches) == 3
  for b in batches:
    assert b["image"].shape == (4, 32, 16, 3) and b["image"].dtype == np.uint8
    assert b["person_id"].dtype == b["camera_id"].dtype == np.int32
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(12) < 11)
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index[:11], np.arange(11))
  names = np.concatenate([b["file_name"] for b in batches])
  assert list(names[:11]) == [r["file_name"] for r in source] and names[11] == ""
  for key in ("person_id", "camera_id"):
    values = np.concatenate([b[key] for b in batches])
    np.testing.assert_array_equal(values[:11], [r[key] for r in source])
    assert values[11] == -1
  images = np.concatenate([b["image"] for b in batches])
  for i, record in enumerate(source):
    np.testing.assert_array_equal(images[i], augment.decode_image(record["image"], (32, 16)))
  assert not images[11].any()


def test_eval_batches_exact_multiple_and_empty():
  source = make_source([2, 2], image_hw=(16, 8))
  batches = list(create_eval_batches(source, 2, (16, 8)))
  assert len(batches) == 2 and all(b["mask"].all() for b in batches)
  assert list(create_eval_batches([], 2, (16, 8))) == []


@pytest.mark.slow  # spawns 2 worker processes (seconds); same grain path as the train test
def test_eval_batches_through_worker_processes():
  source = make_source([3, 2, 4], image_hw=(16, 8), seed=8)  # 9 records
  batches = list(create_eval_batches(source, 4, (16, 8), num_threads=1, num_workers=2))
  index = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(index, [0, 1, 2, 3, 4, 5, 6, 7, 8, -1, -1, -1])
  images = np.concatenate([b["image"] for b in batches])
  for i, record in enumerate(source):
    np.testing.assert_array_equal(images[i], augment.decode_image(record["image"], (16, 8)))
