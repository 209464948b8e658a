"""msmt17 builder (v1 and v2 layouts, list files): train = list_train + list_val,
relabelling, camera from the third name field, list-file errors."""

import pytest

from data_pipelines.datasets import source
from tests.reference import reid_layouts

# (list file, relpath in the list, pid in the list)
LISTS = {
  "list_train.txt": [
    ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
    ("0000/0000_001_15_0303noon_0016_1.jpg", 0),
    ("0009/0009_000_07_0113afternoon_0942_0.jpg", 9),
  ],
  "list_val.txt": [("0004/0004_000_02_0302morning_1225_0.jpg", 4)],
  "list_query.txt": [("0001/0001_000_03_0303morning_0001_0.jpg", 1)],
  "list_gallery.txt": [
    ("0001/0001_001_12_0303noon_0002_0.jpg", 1),
    ("0002/0002_000_05_0303noon_0003_0.jpg", 2),
  ],
}
DIRS = {
  "v1": ("MSMT17_V1", "train", "test"),
  "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
}
EXPECTED = {
  # train pids {0, 4, 9} -> labels 0, 1, 2 (list_val's pid 4 included)
  "train": [
    ("0000_000_01_0303morning_0015_0.jpg", 0, 0),
    ("0000_001_15_0303noon_0016_1.jpg", 0, 14),
    ("0004_000_02_0302morning_1225_0.jpg", 1, 1),
    ("0009_000_07_0113afternoon_0942_0.jpg", 2, 6),
  ],
  "query": [("0001_000_03_0303morning_0001_0.jpg", 1, 2)],
  "gallery": [
    ("0001_001_12_0303noon_0002_0.jpg", 1, 11),
    ("0002_000_05_0303noon_0003_0.jpg", 2, 4),
  ],
}


def write_msmt(manual, version, lists=LISTS):
  top_name, train_dir, test_dir = DIRS[version]
  top = manual / top_name
  written = {}
  for list_name, lines in lists.items():
    folder = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
    written.update(
      reid_layouts.write_images(top / folder, [p for p, _ in lines], seed=len(written))
    )
    reid_layouts.write_text(top, list_name, [f"{p} {pid}" for p, pid in lines])
  return top, written


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_build_and_read(tmp_path, version):
  manual = tmp_path / "manual"
  _, written = write_msmt(manual, version)
  # The other release in the same manual_dir must not confuse the lookup.
  write_msmt(manual, "v2" if version == "v1" else "v1")
  name = f"msmt17/{version}"
  source.build(name, tmp_path / "data", manual)
  for split, expected in EXPECTED.items():
    records = list(source.load_source(name, split, tmp_path / "data"))
    assert [(r["file_name"], r["person_id"], r["camera_id"]) for r in records] == expected
  meta = source.metadata(name, tmp_path / "data")
  assert meta["train_label_to_pid"] == [0, 4, 9]
  assert meta["source"].endswith(DIRS[version][0])
  by_name = {p.rsplit("/", 1)[1]: d for p, d in written.items()}
  record = source.load_source(name, "gallery", tmp_path / "data")[1]
  assert record["image"] == by_name[record["file_name"]]


def _broken(tmp_path, list_name, lines):
  lists = dict(LISTS, **{list_name: lines})
  top, _ = write_msmt(tmp_path / "manual", "v1", lists)
  return top


def test_list_pid_disagreeing_with_the_name_is_an_error(tmp_path):
  top = _broken(tmp_path, "list_query.txt", [("0001/0001_000_03_0303morning_0001_0.jpg", 7)])
  with pytest.raises(ValueError) as err:
    source.build("msmt17/v1", tmp_path / "data", tmp_path / "manual")
  assert f"{top / 'list_query.txt'} line 1" in str(err.value) and "pid 7" in str(err.value)


def test_listed_image_missing_is_an_error(tmp_path):
  top = _broken(tmp_path, "list_query.txt", LISTS["list_query.txt"])
  (top / "test/0001/0001_000_03_0303morning_0001_0.jpg").unlink()
  with pytest.raises(FileNotFoundError, match="0001_000_03_0303morning_0001_0.jpg does not exist"):
    source.build("msmt17/v1", tmp_path / "data", tmp_path / "manual")


def test_malformed_line_and_bad_name(tmp_path):
  top = _broken(tmp_path, "list_gallery.txt", LISTS["list_gallery.txt"])
  (top / "list_gallery.txt").write_text("0001/0001_001_12_0303noon_0002_0.jpg\n")
  with pytest.raises(ValueError, match="list_gallery.txt line 1: expected 'relpath pid'"):
    source.build("msmt17/v1", tmp_path / "data", tmp_path / "manual")
  (top / "list_gallery.txt").write_text("0001/IMG_0001.jpg 1\n")
  with pytest.raises(ValueError, match="list_gallery.txt line 1.*IMG_0001.jpg"):
    source.build("msmt17/v1", tmp_path / "data", tmp_path / "manual")


def test_empty_split_names_the_list(tmp_path):
  top = _broken(tmp_path, "list_query.txt", [])
  with pytest.raises(ValueError) as err:
    source.build("msmt17/v1", tmp_path / "data", tmp_path / "manual")
  assert "'query' has no images" in str(err.value)
  assert str(top / "list_query.txt") in str(err.value)
