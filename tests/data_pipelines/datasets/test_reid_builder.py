"""Bad input to the shared builder logic (via market1501): missing/empty manual_dir,
names off the scheme, corrupt or truncated images (fail / skip and count), empty splits."""

import pytest

from data_pipelines.datasets import image_check, source
from fsaf_jax.core import errors
from tests.reference import reid_layouts

TOP = reid_layouts.MARKET_TOP
FILES = list(reid_layouts.MARKET_FILES)


def _manual(tmp_path, files=FILES):
  top = tmp_path / "manual" / TOP
  reid_layouts.write_images(top, files)
  return tmp_path / "manual", top


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_manual_dir_prints_instructions(tmp_path, state):
  manual = tmp_path / "manual"
  if state == "empty":
    manual.mkdir()
  with pytest.raises(errors.InputNotFoundError) as err:
    source.build("market1501", tmp_path / "data", manual)
  msg = str(err.value)
  assert str(manual) in msg and "does not exist or is empty" in msg
  assert "Market-1501-v15.09.15.zip" in err.value.hint  # the MANUAL_DOWNLOAD_INSTRUCTIONS
  assert not (tmp_path / "data").exists()


def test_manual_dir_without_the_dataset_prints_instructions(tmp_path):
  (tmp_path / "manual" / "something_else").mkdir(parents=True)
  with pytest.raises(FileNotFoundError) as err:
    source.build("market1501", tmp_path / "data", tmp_path / "manual")
  assert "bounding_box_train" in str(err.value)
  assert "Market-1501-v15.09.15.zip" in err.value.hint


def test_manual_dir_that_is_a_file_is_explained(tmp_path):
  zip_path = tmp_path / "Market.zip"
  zip_path.write_bytes(b"PK")
  with pytest.raises(NotADirectoryError, match="folder that holds the archive"):
    source.build("market1501", tmp_path / "data", zip_path)


@pytest.mark.parametrize(
  "bad", ["query/0003_c1s1_000200.jpg", "bounding_box_test/IMG_0001.JPG", "query/notes.txt"]
)
def test_unexpected_file_name_names_the_file(tmp_path, bad):
  manual, top = _manual(tmp_path)
  (top / bad).write_bytes(reid_layouts.encode_image(9, "JPEG"))
  with pytest.raises(ValueError) as err:
    source.build("market1501", tmp_path / "data", manual)
  assert str(top / bad) in str(err.value)
  assert "0002_c1s1_000451_03.jpg" in str(err.value)  # the expected pattern's example


@pytest.mark.parametrize("damage", ["truncate", "empty", "png_as_jpg"])
def test_corrupt_image_fails_naming_it(tmp_path, damage):
  manual, top = _manual(tmp_path)
  bad = top / "bounding_box_test" / "0003_c3s1_000310_01.jpg"
  if damage == "truncate":
    reid_layouts.truncate(bad)
  elif damage == "empty":
    bad.write_bytes(b"")
  else:
    bad.write_bytes(reid_layouts.encode_image(5, "PNG"))
  with pytest.raises(image_check.CorruptImageError) as err:
    source.build("market1501", tmp_path / "data", manual)
  assert str(bad) in str(err.value) and "skip_corrupt" in str(err.value)
  assert not (tmp_path / "data" / "market1501" / "1.0.0").exists()


def test_corrupt_images_skipped_and_counted_with_the_flag(tmp_path):
  manual, top = _manual(tmp_path)
  reid_layouts.truncate(top / "bounding_box_test" / "0003_c3s1_000310_01.jpg")
  reid_layouts.truncate(top / "bounding_box_train" / "0007_c3s3_012345_02.jpg", 0.3)
  source.build("market1501", tmp_path / "data", manual, skip_corrupt=True)
  meta = source.metadata("market1501", tmp_path / "data")
  assert meta["splits"]["gallery"]["skipped_corrupt"] == ["0003_c3s1_000310_01.jpg"]
  assert meta["splits"]["train"]["skipped_corrupt"] == ["0007_c3s3_012345_02.jpg"]
  assert meta["splits"]["query"]["skipped_corrupt"] == []
  gallery = source.load_source("market1501", "gallery", tmp_path / "data")
  assert [r["file_name"] for r in gallery] == ["0003_c2s1_000300_01.jpg"]
  # pid 7 lost its only image: labels are assigned after skipping.
  assert meta["train_label_to_pid"] == [2]
  train = source.load_source("market1501", "train", tmp_path / "data")
  assert [r["person_id"] for r in train] == [0, 0]


def test_split_without_images_names_the_folder(tmp_path):
  manual, top = _manual(tmp_path, [f for f in FILES if not f.startswith("query/")])
  (top / "query").mkdir()
  (top / "query" / "Thumbs.db").write_bytes(b"litter")  # ignored: still no images
  with pytest.raises(ValueError) as err:
    source.build("market1501", tmp_path / "data", manual)
  assert "'query'" in str(err.value) and str(top / "query") in str(err.value)


def test_split_with_only_junk_is_an_error(tmp_path):
  files = [f for f in FILES if not f.startswith("query/")] + ["query/-1_c1s1_000001_01.jpg"]
  manual, _ = _manual(tmp_path, files)
  with pytest.raises(ValueError, match="'query' has no usable images.*1 junk"):
    source.build("market1501", tmp_path / "data", manual)


def test_missing_split_folder_names_it(tmp_path):
  manual, top = _manual(tmp_path)
  for f in (top / "query").iterdir():
    f.unlink()
  (top / "query").rmdir()
  with pytest.raises(FileNotFoundError) as err:
    source.build("market1501", tmp_path / "data", manual)
  assert "query" in str(err.value) and "missing" in str(err.value)
