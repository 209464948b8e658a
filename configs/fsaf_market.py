"""Alias of `configs/fsaf.py:market,fsaf` (its row, figures and command are there).

Kept so that commands and scripts written for the former one-file-per-row layout still run;
takes no `:argument`.
"""

import ml_collections

from configs import fsaf


def get_config() -> ml_collections.ConfigDict:
  """`configs/fsaf.py:market,fsaf`."""
  return fsaf.get_config("market,fsaf")
