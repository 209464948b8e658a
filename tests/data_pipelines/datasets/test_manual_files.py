"""Finding the dataset root in manual_dir: folder, nested folder, zip, ambiguity."""

import pytest

from data_pipelines.datasets import manual_files
from tests.reference import reid_layouts

MARKERS = ["bounding_box_train", "query", "bounding_box_test"]
FILES = [
  "bounding_box_train/0002_c1s1_000451_03.jpg",
  "query/0003_c1s1_000451_03.jpg",
  "bounding_box_test/0003_c2s1_000451_03.jpg",
  "bounding_box_test/Thumbs.db",
]


def _write(root):
  written = reid_layouts.write_images(root, [f for f in FILES if f.endswith(".jpg")])
  (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"thumbs")
  return written


def _check_root(root, written):
  assert root.list_files("bounding_box_test") == ["0003_c2s1_000451_03.jpg", "Thumbs.db"]
  assert root.is_dir("query") and not root.is_dir("nope")
  assert root.is_file("query/0003_c1s1_000451_03.jpg")
  for relpath, data in written.items():
    assert root.read_bytes(relpath) == data


@pytest.mark.parametrize(
  "nesting", ["", "Market-1501-v15.09.15", "downloads/Market-1501-v15.09.15"]
)
def test_finds_extracted_folder(tmp_path, nesting):
  top = tmp_path / nesting if nesting else tmp_path
  written = _write(top)
  root = manual_files.find_dataset_root(tmp_path, MARKERS, dataset="market1501")
  assert isinstance(root, manual_files.DirRoot) and root.path == top
  _check_root(root, written)


def test_finds_zip_archive(tmp_path):
  folder = tmp_path / "src" / "Market-1501-v15.09.15"
  written = _write(folder)
  manual = tmp_path / "manual"
  manual.mkdir()
  reid_layouts.zip_folder(folder, manual / "Market-1501-v15.09.15.zip")
  root = manual_files.find_dataset_root(manual, MARKERS, dataset="market1501")
  assert isinstance(root, manual_files.ZipRoot)
  assert root.prefix == "Market-1501-v15.09.15"
  assert (
    root.location("query") == f"{manual / 'Market-1501-v15.09.15.zip'}:Market-1501-v15.09.15/query"
  )
  _check_root(root, written)


def test_extracted_folder_wins_over_zip(tmp_path):
  _write(tmp_path / "Market-1501-v15.09.15")
  reid_layouts.zip_folder(tmp_path / "Market-1501-v15.09.15", tmp_path / "Market.zip")
  root = manual_files.find_dataset_root(tmp_path, MARKERS, dataset="market1501")
  assert isinstance(root, manual_files.DirRoot)


def test_name_hints_disambiguate_and_ambiguity_is_an_error(tmp_path):
  _write(tmp_path / "Market-1501-v15.09.15")
  _write(tmp_path / "DukeMTMC-reID")
  root = manual_files.find_dataset_root(
    tmp_path, MARKERS, dataset="dukemtmc_reid", name_hints=("duke",)
  )
  assert root.path == tmp_path / "DukeMTMC-reID"
  with pytest.raises(ValueError, match="Several"):
    manual_files.find_dataset_root(tmp_path, MARKERS, dataset="x", name_hints=("cuhk",))


def test_nothing_found_names_markers_partial_and_instructions(tmp_path):
  (tmp_path / "Market-1501-v15.09.15" / "bounding_box_train").mkdir(parents=True)
  with pytest.raises(FileNotFoundError) as err:
    manual_files.find_dataset_root(
      tmp_path, MARKERS, dataset="market1501", instructions="GET IT HERE"
    )
  msg = str(err.value)
  assert "bounding_box_test" in msg and err.value.hint == "GET IT HERE"
  assert "Market-1501-v15.09.15 (missing ['query', 'bounding_box_test'])" in msg


def test_bad_zip_is_reported(tmp_path):
  (tmp_path / "broken.zip").write_bytes(b"not a zip")
  with pytest.raises(ValueError, match="broken.zip"):
    manual_files.find_dataset_root(tmp_path, MARKERS, dataset="market1501")
