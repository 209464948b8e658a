r"""Table 2 `full`: R50-IBN-a + MHSA + ECA + Conv3-5 fusion + BNNeck, Market-1501.

Run:
  python train.py --config=configs/full.py --workdir=/tmp/fsaf_full
Expected time: not measured yet.
"""

import ml_collections

from configs.base import get_base_config


def get_config() -> ml_collections.ConfigDict:
  """The complete FSAF model (the base defaults, spelled out)."""
  config = get_base_config()
  config.model.ibn_stages = (2, 3, 4)
  config.model.mhsa_stages = (4, 5)
  config.model.eca_placement = "stage"
  config.model.fusion = "concat"
  config.model.last_stride = 2
  return config
