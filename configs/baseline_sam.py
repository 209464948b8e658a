r"""The paper's Table 2 "Baseline + SAM": R50-IBN-a + BoTNet MHSA + ECA, Market-1501.

Target (the paper's figures, not ours; mAP / Rank-1, %): 76.3 / 89.6. No run of ours is
claimed.

Run (ImageNet weights: see the README, "Reproducing the paper and BoT"):
  python train.py --config=configs/baseline_sam.py --workdir=workdirs/baseline_sam \
    --config.input.manual_dir=/data/Market-1501-v15.09.15 \
    --config.init.pretrained=imagenet
Steps: as `configs/fsaf_market.py` (~185 x 120 = ~22,200). Expected time: not measured
on a GPU/TPU; about a day on a 2-core CPU (README, Benchmarks).

SAM = MHSA in Conv4_x and Conv5_x + ECA after each stage; no fusion. Hyper-parameters
and MHSA initialisation as `configs/fsaf_market.py`.
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
