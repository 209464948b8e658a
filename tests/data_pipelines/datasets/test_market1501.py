"""market1501 builder on a tiny Market-1501 tree (folder and zip): counts, relabelling,
cameras, junk / distractor handling, split contents and the bytes as shipped."""

import pytest

from data_pipelines.datasets import source
from tests.reference import reid_layouts

TOP = "Market-1501-v15.09.15"
TRAIN = [
  "bounding_box_train/0015_c6s2_000001_01.jpg",
  "bounding_box_train/0002_c1s1_000451_03.jpg",
  "bounding_box_train/0007_c3s3_012345_02.jpg",
  "bounding_box_train/0002_c2s1_000551_01.jpg",
  "bounding_box_train/-1_c1s1_000001_00.jpg",  # junk: dropped
]
QUERY = ["query/0005_c4s1_000100_00.jpg", "query/0003_c1s1_000200_00.jpg"]
GALLERY = [
  "bounding_box_test/0003_c2s1_000300_01.jpg",
  "bounding_box_test/0005_c5s1_000400_01.jpg",
  "bounding_box_test/0000_c1s1_000500_02.jpg",  # distractor: kept
  "bounding_box_test/-1_c3s1_000600_03.jpg",  # junk: dropped
  "bounding_box_test/0000_c6s1_000700_01.jpg",  # distractor: kept
]
# Expected records, by hand: (file name, person_id, camera_id) in file-name order.
# Train pids {2, 7, 15} -> labels 0, 1, 2.
EXPECTED = {
  "train": [
    ("0002_c1s1_000451_03.jpg", 0, 0),
    ("0002_c2s1_000551_01.jpg", 0, 1),
    ("0007_c3s3_012345_02.jpg", 1, 2),
    ("0015_c6s2_000001_01.jpg", 2, 5),
  ],
  "query": [("0003_c1s1_000200_00.jpg", 3, 0), ("0005_c4s1_000100_00.jpg", 5, 3)],
  "gallery": [
    ("0000_c1s1_000500_02.jpg", 0, 0),
    ("0000_c6s1_000700_01.jpg", 0, 5),
    ("0003_c2s1_000300_01.jpg", 3, 1),
    ("0005_c5s1_000400_01.jpg", 5, 4),
  ],
}


def write_market(top):
  written = reid_layouts.write_images(top, TRAIN + QUERY + GALLERY)
  (top / "bounding_box_test" / "Thumbs.db").write_bytes(b"windows litter")
  (top / "readme.txt").write_text("Market-1501")
  return written


@pytest.fixture(scope="module", params=["folder", "zip"])
def built(request, tmp_path_factory):
  """(data_dir, {relpath: bytes}) of the fixture built from a folder or a zip."""
  tmp = tmp_path_factory.mktemp(f"market_{request.param}")
  manual = tmp / "manual"
  manual.mkdir()
  if request.param == "folder":
    written = write_market(manual / TOP)
  else:
    written = write_market(tmp / "src" / TOP)
    reid_layouts.zip_folder(tmp / "src" / TOP, manual / f"{TOP}.zip")
  source.build("market1501", tmp / "data", manual)
  return tmp / "data", written


@pytest.mark.parametrize("split", ["train", "query", "gallery"])
def test_records(built, split):
  data_dir, written = built
  records = list(source.load_source("market1501", split, data_dir))
  assert [(r["file_name"], r["person_id"], r["camera_id"]) for r in records] == EXPECTED[split]
  by_name = {relpath.rsplit("/", 1)[1]: data for relpath, data in written.items()}
  for r in records:
    assert r["image"] == by_name[r["file_name"]]  # shipped bytes, not re-encoded


def test_metadata(built):
  data_dir, _ = built
  meta = source.metadata("market1501", data_dir)
  assert meta["num_train_identities"] == 3
  assert meta["train_label_to_pid"] == [2, 7, 15]
  assert source.num_train_identities("market1501", data_dir) == 3
  splits = meta["splits"]
  assert [splits[s]["num_images"] for s in ("train", "query", "gallery")] == [4, 2, 4]
  assert [splits[s]["num_ids"] for s in ("train", "query", "gallery")] == [3, 2, 3]
  assert [splits[s]["num_junk_dropped"] for s in ("train", "query", "gallery")] == [1, 0, 1]
  assert all(splits[s]["skipped_corrupt"] == [] for s in splits)
  assert TOP in meta["source"]


def test_distractors_outside_the_gallery_are_dropped(tmp_path):
  top = tmp_path / "manual" / TOP
  reid_layouts.write_images(top, TRAIN + QUERY + GALLERY + ["query/0000_c2s1_000001_01.jpg"])
  source.build("market1501", tmp_path / "data", tmp_path / "manual")
  query = [r["file_name"] for r in source.load_source("market1501", "query", tmp_path / "data")]
  assert query == [name for name, _, _ in EXPECTED["query"]]
  meta = source.metadata("market1501", tmp_path / "data")
  assert meta["splits"]["query"]["num_distractors_dropped"] == 1
