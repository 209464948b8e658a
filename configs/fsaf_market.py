r"""The paper's FSAF on Market-1501: Table 2 "Baseline + SAM + Feature Fusion", Table 1.

Target (the paper's figures, not ours; mAP / Rank-1, %): Table 2 81.5 / 92.7; Table 1
"Our Method" 82.4 / 94.8 (the abstract gives mAP 84.9). The paper reports this one
model with these different figures and does not say why; no run of ours is claimed.

Run (ImageNet weights: see the README, "Reproducing the paper and BoT"):
  python -m fsaf_jax.convert_ibn resnet50_ibn_a-d9d0bb7b.pth r50_ibn_a.msgpack
  python train.py --config=configs/fsaf_market.py --workdir=workdirs/fsaf_market \
    --config.input.manual_dir=/data/Market-1501-v15.09.15 \
    --config.init.pretrained=imagenet
Steps: 120 epochs of BoT's sampler epoch, floor(sum_i max(n_i, 4) // 4 / 16) P x K =
16 x 4 batches (~185 on Market-1501: ~22,200 steps; the run card prints the exact
count). Expected time: not measured on a GPU/TPU; about a day on a 2-core CPU (the
float32 train step of `python benchmarks/run.py`, doubled for batch 64).

Recipe: the paper gives its architecture (ResNet50-IBN-a, BoTNet MHSA in Conv4_x and
Conv5_x, ECA after each stage, Conv3-5 max-pool fusion, BNNeck), its losses (CE +
triplet) and Conv5_x at 8x4 (last stride 2), and no training hyper-parameters; those
are BoT's (the recipe its baseline comes from): Adam 3.5e-4, coupled weight decay
5e-4, BoT's per-epoch warmup staircase over 10 epochs from 1%, x0.1 from epochs 40
and 70 (1-based), 120 epochs, label smoothing 0.1, triplet margin 0.3, P x K = 16 x 4,
flip / pad 10 + crop / random erasing 0.5. Where the paper is silent on the MHSA
initialisation, BoTNet's is used: the last BN scale of each attention block starts at 0
(`config.init.zero_init_attention_bn`).
"""

import ml_collections

from configs.base import get_base_config


def get_config() -> ml_collections.ConfigDict:
  """FSAF (the base defaults) on Market-1501."""
  config = get_base_config()
  config.input.dataset = "market1501"
  return config
