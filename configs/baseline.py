r"""The paper's Table 2 "Baseline": ResNet50-IBN-a + BNNeck, Market-1501.

Target (the paper's figures, not ours; mAP / Rank-1, %): 71.7 / 82.4. No run of ours is
claimed.

Run (ImageNet weights: see the README, "Reproducing the paper and BoT"):
  python train.py --config=configs/baseline.py --workdir=workdirs/baseline \
    --config.input.manual_dir=/data/Market-1501-v15.09.15 \
    --config.init.pretrained=imagenet
Steps: as `configs/fsaf_market.py` (~185 x 120 = ~22,200). Expected time: not measured
on a GPU/TPU; about a day on a 2-core CPU (README, Benchmarks).

The paper's baseline keeps FSAF's Conv5_x at 8x4 (last stride 2), which is why its
figures sit below BoT's R50-IBN-a (last stride 1, `configs/bot_r50_ibn_a.py`): BoT's
own ablation credits last stride 1 with +0.6 Rank-1 / +1.4 mAP. Hyper-parameters: BoT's,
as `configs/fsaf_market.py`.
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
