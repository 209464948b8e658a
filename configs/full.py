r"""Table 2 `full`: R50-IBN-a + MHSA + ECA + Conv3-5 fusion + BNNeck, Market-1501.

Run:
  python train.py --config=configs/full.py --workdir=/tmp/fsaf_full
Expected time: not measured on a GPU/TPU (none was available). On a 2-core CPU in
float32 the train step takes ~4.7 s at P x K = 16 x 4 (twice the batch-32 figure of
`python benchmarks/run.py`), so 120 epochs x 46 steps is ~7 h plus evaluations.
The paper's Table 2 figure for this row: not available here (see the README).
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
