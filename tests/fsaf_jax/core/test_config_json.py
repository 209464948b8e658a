"""config_name: the recorded name of a --config argument keeps a parameterised config's
argument (configs/fsaf.py:DATASET,VARIANT names one row)."""

import pytest

from fsaf_jax.core.config_json import config_name


@pytest.mark.parametrize(
  "argument, name",
  [
    ("configs/demo.py", "demo"),
    ("/abs/path/configs/tiny.py", "tiny"),
    ("configs/fsaf.py:market,fsaf", "fsaf:market,fsaf"),
    ("configs/fsaf.py:duke,baseline_sam", "fsaf:duke,baseline_sam"),
  ],
)
def test_config_name(argument, name):
  assert config_name(argument) == name
