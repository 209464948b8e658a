"""The synthetic generator never writes into a folder that already holds a dataset, nor
deletes a dataset it did not write; the demo's data setup is refused the same way."""

import pathlib

import pytest

from configs import demo
from data_pipelines import synthetic
from fsaf_jax.core import errors
from fsaf_jax.demo import run as demo_run
from fsaf_jax.demo import synthetic_data
from tests.reference import reid_layouts

SMALL = synthetic.SyntheticConfig(
  num_ids=6,
  train_images_per_id=2,
  query_per_id=1,
  gallery_per_id=2,
  num_distractors=1,
  num_junk=1,
  image_size=(32, 16),
)
MARKET_FILES = [
  "bounding_box_train/0002_c1s1_000451_03.jpg",
  "query/0003_c1s1_000200_00.jpg",
  "bounding_box_test/0003_c2s1_000300_01.jpg",
]


def _tree(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
  "layout, evidence",
  [
    ("market_folder_itself", "bounding_box_test"),
    ("market_folder_below", "bounding_box_test"),
    ("zip", "Market-1501-v15.09.15.zip"),
    ("images", "0003_c1s1_000200_00.jpg"),
  ],
)
def test_a_folder_holding_a_dataset_is_refused_and_left_as_it_was(tmp_path, layout, evidence):
  out = tmp_path / "out"
  if layout == "market_folder_itself":  # e.g. manual_dir=<an existing Market-1501 folder>
    reid_layouts.write_images(out, MARKET_FILES)
  elif layout == "market_folder_below":
    reid_layouts.write_images(out / "downloads" / "Market-1501", MARKET_FILES)
  elif layout == "zip":
    reid_layouts.write_images(tmp_path / "src" / synthetic.MARKET_DIR, MARKET_FILES)
    out.mkdir()
    reid_layouts.zip_folder(tmp_path / "src" / synthetic.MARKET_DIR, out / f"{evidence}")
  else:
    reid_layouts.write_images(out / "photos", ["0003_c1s1_000200_00.jpg"])
  before = _tree(out)
  for overwrite in (False, True):
    with pytest.raises(errors.OutputExistsError, match=f"already holds a dataset .*{evidence}"):
      synthetic.generate(out, SMALL, overwrite=overwrite)
  assert _tree(out) == before


def test_a_market_folder_it_did_not_write_is_never_deleted(tmp_path):
  out = tmp_path / "out"
  reid_layouts.write_images(out / synthetic.MARKET_DIR, MARKET_FILES)
  before = _tree(out)
  with pytest.raises(errors.OutputExistsError, match="not written by data_pipelines.synthetic"):
    synthetic.generate(out, SMALL, overwrite=True)
  assert _tree(out) == before


def test_own_output_and_unrelated_files_are_fine(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "README.txt").write_text("notes")
  synthetic.generate(out, SMALL)
  first = _tree(out)
  with pytest.raises(errors.OutputExistsError, match="overwrite"):
    synthetic.generate(out, SMALL)
  assert _tree(out) == first
  synthetic.generate(out, SMALL, overwrite=True)  # its own earlier output
  assert _tree(out) == first  # same seed, same bytes
  assert synthetic.existing_dataset(out) is None


def test_output_that_is_a_file(tmp_path):
  (tmp_path / "f").write_text("x")
  with pytest.raises(errors.UserError, match="is a file"):
    synthetic.generate(tmp_path / "f", SMALL)


@pytest.mark.parametrize("case", ["parent_of_a_market_folder", "another_dataset"])
def test_demo_data_mistakes_are_user_errors(tmp_path, case):
  """One ERROR line from train.py (not a traceback): manual_dir holding a Market folder
  the generator did not write, or a dataset the demo cannot write."""
  config = demo.get_config()
  config.input.data_dir = str(tmp_path / "tfds")
  config.input.manual_dir = str(tmp_path / "datasets")
  if case == "parent_of_a_market_folder":
    reid_layouts.write_images(tmp_path / "datasets" / reid_layouts.MARKET_TOP, MARKET_FILES)
    match = "exists but was not written by data_pipelines.synthetic"
  else:
    config.input.dataset = "dukemtmc_reid"
    match = "config.input.dataset='dukemtmc_reid'"
  before = _tree(tmp_path)
  with pytest.raises(errors.UserError, match=match):
    synthetic_data.ensure_synthetic(config, synthetic_data.synthetic_config(config.demo.synthetic))
  assert _tree(tmp_path) == before


def test_demo_setup_does_not_write_a_synthetic_copy_into_a_market_folder(tmp_path):
  # train.py --config=configs/demo.py --config.input.manual_dir=<existing Market folder>
  market = tmp_path / "Market-1501-v15.09.15"
  reid_layouts.write_images(market, MARKET_FILES)
  before = _tree(market)
  config = demo.get_config()
  config.input.manual_dir = str(market)
  config.input.data_dir = str(tmp_path / "tfds")
  with pytest.raises(errors.OutputExistsError, match=f"{market} already holds a dataset"):
    synthetic_data.ensure_synthetic(config, synthetic_data.synthetic_config(config.demo.synthetic))
  assert _tree(market) == before
  assert not (tmp_path / "tfds").exists()
  # The same through the demo's run (what train.py runs), before any training.
  with pytest.raises(errors.OutputExistsError, match=f"{market} already holds a dataset"):
    demo_run.run_demo(config, tmp_path / "work")
  assert _tree(market) == before
  assert not (tmp_path / "tfds").exists()
  assert not (tmp_path / "work" / "config.json").exists()
