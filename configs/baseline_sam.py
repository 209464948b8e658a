r"""Table 2 `baseline+SAM`: R50-IBN-a + BoTNet MHSA (Conv4_x, Conv5_x) + ECA, Market-1501.

Run:
  python train.py --config=configs/baseline_sam.py --workdir=/tmp/fsaf_baseline_sam
Expected time: not measured on a GPU/TPU (none was available); between `baseline.py`
and `full.py` (~7 h each for 120 epochs on a 2-core CPU, from `benchmarks/run.py`).
The paper's Table 2 figure for this row: not available here (see the README).
"""

import ml_collections

from configs.base import get_base_config


def get_config() -> ml_collections.ConfigDict:
  """Baseline + self-attention modules (MHSA + ECA after each stage), no fusion."""
  config = get_base_config()
  config.model.mhsa_stages = (4, 5)
  config.model.eca_placement = "stage"
  config.model.fusion = "none"
  return config
