r"""fast-reid's BoT(R50-ibn) (configs/Market1501/bagtricks_R50-ibn.yml), Market-1501.

Target (fast-reid's model-zoo figures, not ours; Rank-1 / mAP, %): 94.9 / 87.6. No run
of ours is claimed.

Run (ImageNet weights: see the README, "Reproducing the paper and BoT"):
  python train.py --config=configs/fastreid_bot_r50_ibn.py \
    --workdir=workdirs/fastreid_bot_r50_ibn \
    --config.input.manual_dir=/data/Market-1501-v15.09.15 \
    --config.init.pretrained=imagenet
Steps: 120 epochs of 12,936 // 64 = 202 iterations = 24,240 steps. Expected time: not
measured on a GPU/TPU; over a day on a 2-core CPU (README, Benchmarks).

fast-reid's Base-bagtricks recipe with WITH_IBN: ResNet50-IBN-a, last stride 1, BNNeck,
CE (eps 0.1) + batch-hard triplet (margin 0.3, on the pre-BN feature), no centre loss;
Adam 3.5e-4, weight decay 5e-4 on weights, biases and norms; fast-reid's schedule:
WarmupLR over 2,000 iterations from 0.1, then MultiStepLR (40, 90) stepped at the end of
every epoch after the warmup, so the decays act from 0-based epochs 49 and 99; an epoch
is len(train_set) // 64 = 202 iterations (`train.epoch_length='images'`); identity
sampler 16 x 4 (NaiveIdentitySampler: BoT's draw as one endless stream); flip, pad 10
+ crop, random erasing 0.5 with the ImageNet mean.
Deviations: fast-reid trains with AMP (float16 on GPU), here float32 unless
`--config.model.dtype=bfloat16`; fast-reid's classifier starts at std 0.01, ours at
BoT's 0.001 (the model has one head); the sampler's stream restarts at each sampler
epoch (~185 batches) instead of running on across epochs.
"""

import ml_collections

from configs import bot_r50_ibn_a


def get_config() -> ml_collections.ConfigDict:
  """fast-reid BoT(R50-ibn)."""
  config = bot_r50_ibn_a.get_config()
  config.loss.center_weight = 0.0
  config.optim.lr_schedule = "fastreid"
  config.optim.warmup_epochs = 0
  config.optim.warmup_iters = 2000
  config.optim.warmup_factor = 0.1
  config.optim.milestones = (40, 90)
  config.train.epoch_length = "images"
  return config
