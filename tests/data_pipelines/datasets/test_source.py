"""load_source / num_train_identities / build on a built fixture: record types, random
and batched access, pickling (grain workers), registration, and errors."""

import pickle

import pytest
import tensorflow_datasets as tfds

import data_pipelines.datasets  # noqa: F401  (registration under test)
from data_pipelines.datasets import source
from tests.reference import reid_layouts

FILES = [
  "bounding_box_train/0002_c1s1_000451_03.jpg",
  "bounding_box_train/0009_c2s1_000551_01.jpg",
  "bounding_box_train/0009_c4s1_000651_01.jpg",
  "query/0003_c1s1_000200_00.jpg",
  "bounding_box_test/0003_c2s1_000300_01.jpg",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("source")
  reid_layouts.write_images(tmp / "manual" / "Market-1501-v15.09.15", FILES)
  builder = source.build("market1501", tmp / "data", tmp / "manual")
  assert builder.is_prepared()
  return tmp / "data"


def test_builders_registered():
  for name in ("market1501", "dukemtmc_reid", "msmt17", "cuhk03_np"):
    assert name in tfds.list_builders(with_community_datasets=False)
  assert [c.name for c in tfds.builder_cls("msmt17").BUILDER_CONFIGS] == ["v1", "v2"]
  assert [c.name for c in tfds.builder_cls("cuhk03_np").BUILDER_CONFIGS] == ["detected", "labeled"]


def test_tfds_builder_reads_what_was_built(data_dir):
  builder = tfds.builder("market1501", data_dir=data_dir)
  assert {s: builder.info.splits[s].num_examples for s in ("train", "query", "gallery")} == {
    "train": 3,
    "query": 1,
    "gallery": 1,
  }
  assert str(builder.info.file_format.value) == "array_record"
  assert builder.info.disable_shuffling


def test_record_types_and_access(data_dir):
  train = source.load_source("market1501", "train", data_dir)
  assert len(train) == 3
  record = train[2]
  assert set(record) == {"image", "person_id", "camera_id", "file_name"}
  assert isinstance(record["image"], bytes) and record["image"][:2] == b"\xff\xd8"
  assert record == {
    "image": record["image"],
    "person_id": 1,
    "camera_id": 3,
    "file_name": "0009_c4s1_000651_01.jpg",
  }
  assert type(record["person_id"]) is int and type(record["file_name"]) is str
  batch = train.__getitems__([2, 0])
  assert [r["file_name"] for r in batch] == [record["file_name"], train[0]["file_name"]]
  clone = pickle.loads(pickle.dumps(train))
  assert [r["file_name"] for r in clone] == [r["file_name"] for r in train]
  assert clone[1]["image"] == train[1]["image"]


def test_num_train_identities(data_dir):
  assert source.num_train_identities("market1501", data_dir) == 2


def test_build_again_is_a_no_op(data_dir, tmp_path):
  # manual_dir no longer needed once built: an empty one must not be read.
  builder = source.build("market1501", data_dir, tmp_path / "nothing_here")
  assert builder.info.metadata["train_label_to_pid"] == [2, 9]


def test_not_built_says_how_to_build(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m data_pipelines.datasets.build"):
    source.load_source("dukemtmc_reid", "train", tmp_path)
  with pytest.raises(FileNotFoundError, match="--dataset=msmt17/v1"):
    source.num_train_identities("msmt17/v1", tmp_path)


def test_unknown_split(data_dir):
  with pytest.raises(ValueError, match="'test'"):
    source.load_source("market1501", "test", data_dir)
