"""A TFDS build into a data_dir already holding the dataset from another source is
refused (naming both sources and the overwrite flag); `--overwrite` rebuilds without
losing the old build on failure; a failed build leaves no folders; `.JPG` names build."""

import pathlib

import pytest

from data_pipelines.datasets import image_check, source
from fsaf_jax.core import errors
from tests.reference import reid_layouts

TOP = reid_layouts.MARKET_TOP
FILES = list(reid_layouts.MARKET_FILES)


def _tree(root: pathlib.Path) -> dict[str, tuple[int, float]]:
  """Relative path -> (size, mtime) of every file under `root`."""
  return {
    str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
    for p in root.rglob("*")
    if p.is_file()
  }


def _manual(tmp_path, name, files=FILES, seed=0):
  reid_layouts.write_images(tmp_path / name / TOP, files, seed=seed)
  return tmp_path / name


def _num_images(builder):
  return {s: v["num_images"] for s, v in builder.info.metadata["splits"].items()}


@pytest.fixture
def built(tmp_path):
  manual = _manual(tmp_path, "manual_a")
  data_dir = tmp_path / "data"
  builder = source.build("market1501", data_dir, manual)
  return manual, data_dir, builder


def test_same_source_or_no_source_uses_the_build(built, tmp_path):
  manual, data_dir, builder = built
  fingerprint = builder.info.metadata["source_fingerprint"]
  assert fingerprint["num_files"] == len(FILES)
  before = _tree(data_dir)
  again = source.build("market1501", data_dir, manual)
  assert again.info.metadata["source_fingerprint"] == fingerprint
  # An identical copy elsewhere is the same source.
  copy = _manual(tmp_path, "manual_copy")
  source.build("market1501", data_dir, copy)
  # No copy of the dataset in manual_dir (the download was deleted after the build).
  source.build("market1501", data_dir, tmp_path / "gone")
  (tmp_path / "unrelated").mkdir()
  (tmp_path / "unrelated" / "readme.txt").write_text("x")
  source.build("market1501", data_dir, tmp_path / "unrelated")
  assert _tree(data_dir) == before


@pytest.mark.parametrize("change", ["new_image", "different_size"])
def test_another_source_is_refused_naming_both_and_the_flag(built, tmp_path, change):
  manual, data_dir, _ = built
  files = FILES + ["query/0007_c1s1_000100_00.JPG"] if change == "new_image" else FILES
  other = _manual(tmp_path, "manual_b", files, seed=0 if change == "new_image" else 1)
  before = _tree(data_dir)
  with pytest.raises(errors.OutputExistsError) as e:
    source.build("market1501", data_dir, other)
  message = str(e.value)
  assert str(manual / TOP) in message and str(other / TOP) in message
  assert f"{len(FILES)} files" in message
  assert "--overwrite" in e.value.hint and str(other) in e.value.hint
  assert _tree(data_dir) == before  # the build is left as it was


def test_overwrite_rebuilds_from_the_new_source_upper_case_names_included(built, tmp_path):
  _, data_dir, builder = built
  assert _num_images(builder)["query"] == 1
  other = _manual(tmp_path, "manual_b", FILES + ["query/0007_c1s1_000100_00.JPG"])
  rebuilt = source.build("market1501", data_dir, other, overwrite=True)
  assert _num_images(rebuilt)["query"] == 2
  assert rebuilt.info.metadata["source"] == str(other / TOP)
  names = [r["file_name"] for r in source.load_source("market1501", "query", data_dir)]
  assert names == ["0003_c1s1_000200_00.jpg", "0007_c1s1_000100_00.JPG"]
  assert not list(data_dir.rglob("*.replaced"))


def test_failed_overwrite_keeps_the_old_build(built, tmp_path):
  manual, data_dir, _ = built
  other = _manual(tmp_path, "manual_b", FILES + ["query/0007_c1s1_000100_00.jpg"])
  reid_layouts.truncate(other / TOP / "query" / "0007_c1s1_000100_00.jpg")
  before = _tree(data_dir)
  with pytest.raises(image_check.CorruptImageError, match="0007_c1s1_000100_00.jpg"):
    source.build("market1501", data_dir, other, overwrite=True)
  assert _tree(data_dir) == before
  assert source.metadata("market1501", data_dir)["source"] == str(manual / TOP)
  assert len(source.load_source("market1501", "query", data_dir)) == 1


def test_failed_first_build_leaves_no_folders(tmp_path):
  bad = _manual(tmp_path, "manual", FILES + ["query/IMG_0001.JPG"])
  with pytest.raises(errors.UserError, match="IMG_0001.JPG"):
    source.build("market1501", tmp_path / "data", bad)
  assert not (tmp_path / "data").exists()
  (tmp_path / "existing").mkdir()
  with pytest.raises(errors.UserError, match="IMG_0001.JPG"):
    source.build("market1501", tmp_path / "existing", bad)
  assert list((tmp_path / "existing").iterdir()) == []


def test_unknown_dataset_and_missing_download_are_user_errors(tmp_path):
  with pytest.raises(errors.UserError, match="unknown dataset 'market15'") as e:
    source.build("market15", tmp_path / "data", tmp_path)
  assert "market1501" in e.value.hint
  with pytest.raises(errors.InputNotFoundError, match="does not exist or is empty"):
    source.build("market1501", tmp_path / "data", tmp_path / "nothing")
  with pytest.raises(errors.InputNotFoundError, match="is not built in data_dir"):
    source.load_source("market1501", "train", tmp_path / "data")
  assert not (tmp_path / "data").exists()
