"""`prepare_dataset`: a build already in data_dir is checked against manual_dir."""

import pytest

from configs import tiny
from data_pipelines.datasets import source
from fsaf_jax.core import errors
from fsaf_jax.training import data_setup
from tests.reference import reid_layouts


def _manual(root, seed):
  reid_layouts.write_images(root / reid_layouts.MARKET_TOP, reid_layouts.MARKET_FILES, seed=seed)
  return root


def test_training_on_a_build_from_another_copy_is_refused(tmp_path):
  copy_a = _manual(tmp_path / "a", seed=0)
  copy_b = _manual(tmp_path / "b", seed=1)  # same names, other bytes and sizes
  data_dir = tmp_path / "tfds"
  source.build("market1501", data_dir, copy_a)
  config = tiny.get_config()
  config.input.dataset = "market1501"
  config.input.data_dir = str(data_dir)
  config.input.manual_dir = str(copy_b)
  with pytest.raises(errors.OutputExistsError, match="another source|other"):
    data_setup.prepare_dataset(config, tmp_path / "w")
  config.input.manual_dir = str(copy_a)  # the copy it was built from: used as it is
  assert data_setup.prepare_dataset(config, tmp_path / "w").input.data_dir == str(data_dir)
  config.input.manual_dir = ""  # no copy named: the build is used
  data_setup.prepare_dataset(config, tmp_path / "w")
