r"""Table 2 `baseline`: ResNet50-IBN-a + BNNeck (no MHSA, no ECA, no fusion), Market-1501.

Run:
  python train.py --config=configs/baseline.py --workdir=/tmp/fsaf_baseline
Expected time: not measured on a GPU/TPU (none was available). On a 2-core CPU in
float32 the train step takes ~4.3 s at P x K = 16 x 4 (twice the batch-32 figure of
`python benchmarks/run.py`), so 120 epochs x 46 steps is ~7 h plus evaluations.
The paper's Table 2 figure for this row: not available here (see the README).
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
