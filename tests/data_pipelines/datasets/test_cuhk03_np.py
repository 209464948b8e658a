"""cuhk03_np builder: detected / labeled sub-trees of one cuhk03-np release, PNG bytes."""

import pytest

from data_pipelines.datasets import source
from tests.reference import reid_layouts

FILES = {
  "detected": [
    "bounding_box_train/0001_c1_1.png",
    "bounding_box_train/0001_c2_6.png",
    "bounding_box_train/0003_c2_7.png",
    "query/1400_c1_2.png",
    "bounding_box_test/1400_c2_8.png",
    "bounding_box_test/1467_c1_1.png",
  ],
  "labeled": [
    "bounding_box_train/0002_c1_1.png",
    "query/1400_c2_1.png",
    "bounding_box_test/1400_c1_3.png",
  ],
}
EXPECTED = {
  "detected": {
    "train": [("0001_c1_1.png", 0, 0), ("0001_c2_6.png", 0, 1), ("0003_c2_7.png", 1, 1)],
    "query": [("1400_c1_2.png", 1400, 0)],
    "gallery": [("1400_c2_8.png", 1400, 1), ("1467_c1_1.png", 1467, 0)],
  },
  "labeled": {
    "train": [("0002_c1_1.png", 0, 0)],
    "query": [("1400_c2_1.png", 1400, 1)],
    "gallery": [("1400_c1_3.png", 1400, 0)],
  },
}


@pytest.fixture(scope="module")
def manual(tmp_path_factory):
  manual = tmp_path_factory.mktemp("cuhk") / "manual"
  written = {}
  for subset, files in FILES.items():
    written.update(
      reid_layouts.write_images(manual / "cuhk03-np", [f"{subset}/{f}" for f in files])
    )
  return manual, written


@pytest.mark.parametrize("subset", ["detected", "labeled"])
def test_build_and_read(tmp_path, manual, subset):
  manual_dir, written = manual
  name = f"cuhk03_np/{subset}"
  source.build(name, tmp_path / "data", manual_dir)
  for split, expected in EXPECTED[subset].items():
    records = list(source.load_source(name, split, tmp_path / "data"))
    assert [(r["file_name"], r["person_id"], r["camera_id"]) for r in records] == expected
    for r in records:
      assert r["image"].startswith(b"\x89PNG")
  train0 = source.load_source(name, "train", tmp_path / "data")[0]
  assert (
    train0["image"] == written[f"{subset}/bounding_box_train/{EXPECTED[subset]['train'][0][0]}"]
  )
  assert source.num_train_identities(name, tmp_path / "data") == len(
    {pid for _, pid, _ in EXPECTED[subset]["train"]}
  )


def test_jpeg_in_a_png_release_is_rejected(tmp_path):
  copy = tmp_path / "manual"
  reid_layouts.write_images(copy / "cuhk03-np", [f"detected/{f}" for f in FILES["detected"]])
  bad = copy / "cuhk03-np/detected/query/1400_c1_2.png"
  bad.write_bytes(reid_layouts.encode_image(1, "JPEG"))
  with pytest.raises(ValueError, match="1400_c1_2.png.*expected PNG"):
    source.build("cuhk03_np/detected", tmp_path / "data", copy)
