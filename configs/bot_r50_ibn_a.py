r"""BoT (Luo et al. 2019, reid-strong-baseline): IBN-Net50-a with centre loss, Market-1501.

Target (BoT's README figures, not ours; Rank-1 / mAP, %): 95.0 / 88.2. No run of ours is
claimed.

Run (ImageNet weights: see the README, "Reproducing the paper and BoT"):
  python train.py --config=configs/bot_r50_ibn_a.py --workdir=workdirs/bot_r50_ibn_a \
    --config.input.manual_dir=/data/Market-1501-v15.09.15 \
    --config.init.pretrained=imagenet
Steps: 120 epochs of BoT's sampler epoch (~185 P x K = 16 x 4 batches on Market-1501:
~22,200 steps; the run card prints the exact count). Expected time: not measured on a
GPU/TPU; about a day on a 2-core CPU (README, Benchmarks).

BoT's recipe as a whole (softmax_triplet_with_center, IBN-Net50-a): ResNet50-IBN-a with
last stride 1 (Conv5_x at 16x8), BNNeck, ImageNet weights; CE with label smoothing 0.1 +
batch-hard triplet (margin 0.3) on the pre-BN feature + centre loss (weight 5e-4, centres
trained by SGD at lr 0.5 on the unweighted loss); Adam 3.5e-4 with coupled weight decay
5e-4 (biases and norms too); WarmupMultiStepLR stepped at each epoch start (10 warmup
epochs from 1%, x0.1 at 40 and 70), 120 epochs; RandomIdentitySampler 16 x 4; flip 0.5,
pad 10 + crop, random erasing 0.5; test feature after the BNNeck, L2-normalised
(Euclidean on normalised features ranks as cosine).
Deviation: BoT's epochs end when fewer than P identities have images left, a few
batches short of the fixed epoch here, which tops up from the next shuffle
(`data_pipelines/pk_sampler.py`): the lr schedule needs a fixed epoch length.
"""

import ml_collections

from configs.base import get_base_config


def get_config() -> ml_collections.ConfigDict:
  """BoT IBN-Net50-a + centre loss."""
  config = get_base_config()
  config.model.mhsa_stages = ()
  config.model.eca_placement = "none"
  config.model.fusion = "none"
  config.model.last_stride = 1
  config.loss.center_weight = 5e-4
  config.loss.center_lr = 0.5
  return config
