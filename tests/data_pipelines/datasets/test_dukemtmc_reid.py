"""dukemtmc_reid builder on a tiny DukeMTMC-reID tree: relabelling, 8 cameras, pid 0 is
not special (Duke has no junk/distractor convention)."""

from data_pipelines.datasets import source
from tests.reference import reid_layouts

FILES = [
  "bounding_box_train/0005_c2_f0046182.jpg",
  "bounding_box_train/0001_c8_f0213514.jpg",
  "bounding_box_train/0005_c7_f0046999.jpg",
  "query/0011_c1_f0000100.jpg",
  "bounding_box_test/0011_c3_f0000300.jpg",
  "bounding_box_test/7140_c5_f0000400.jpg",
]


def test_build_and_read(tmp_path):
  top = tmp_path / "manual" / "DukeMTMC-reID"
  written = reid_layouts.write_images(top, FILES)
  source.build("dukemtmc_reid", tmp_path / "data", tmp_path / "manual")
  data_dir = tmp_path / "data"
  got = {
    split: [
      (r["file_name"], r["person_id"], r["camera_id"])
      for r in source.load_source("dukemtmc_reid", split, data_dir)
    ]
    for split in ("train", "query", "gallery")
  }
  assert got == {
    # pids {1, 5} -> labels 0, 1
    "train": [
      ("0001_c8_f0213514.jpg", 0, 7),
      ("0005_c2_f0046182.jpg", 1, 1),
      ("0005_c7_f0046999.jpg", 1, 6),
    ],
    "query": [("0011_c1_f0000100.jpg", 11, 0)],
    "gallery": [("0011_c3_f0000300.jpg", 11, 2), ("7140_c5_f0000400.jpg", 7140, 4)],
  }
  assert source.metadata("dukemtmc_reid", data_dir)["train_label_to_pid"] == [1, 5]
  record = source.load_source("dukemtmc_reid", "train", data_dir)[0]
  assert record["image"] == written["bounding_box_train/0001_c8_f0213514.jpg"]
