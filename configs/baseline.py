r"""Table 2 `baseline`: ResNet50-IBN-a + BNNeck (no MHSA, no ECA, no fusion), Market-1501.

Run:
  python train.py --config=configs/baseline.py --workdir=/tmp/fsaf_baseline
Expected time: not measured yet.
"""

import ml_collections

from configs.base import get_base_config


def get_config() -> ml_collections.ConfigDict:
  """R50-IBN-a + BNNeck, last stride 2 as the paper."""
  config = get_base_config()
  config.model.mhsa_stages = ()
  config.model.eca_placement = "none"
  config.model.fusion = "none"
  return config
