r"""The CPU demo: the tiny FSAF on the embedded synthetic dataset, end to end.

Run (from the repository root, fresh machine):
  python train.py --config=configs/demo.py --workdir=workdirs/demo
Generates the synthetic Market-1501-layout dataset into WORKDIR/data/synthetic (1,000
training and 100 test identities), builds it with the real `market1501` TFDS builder,
trains ~2,500 steps of 16 x 4, evaluates query/gallery, and prints Rank-1 / mAP of the
trained network beside the untrained one's (same init) and the colour-histogram
baseline's (WORKDIR/eval/baselines.json, WORKDIR/eval/metrics.json, ranked_list.png).
Expected time: ~6-11 min on a 2-core CPU (10 min 47 s measured on a loaded machine).
Measured: one run trained mAP 73.3 / Rank-1 83.5, a tuning run with these
settings: trained mAP 76.6 / Rank-1 88.0, untrained mAP 3.2, colour histogram mAP 21.0.
The synthetic data is not Market-1501: the figures show the pipeline learns identity
from shape and arrangement cues that colour statistics miss, nothing about real ReID.
"""

import ml_collections

from configs import tiny


def get_config() -> ml_collections.ConfigDict:
  """Tiny FSAF (widths 16-128) on 64x32 synthetic pedestrians, a short schedule."""
  config = tiny.get_config()
  config.model.stem_width = 16
  config.model.widths = (16, 32, 64, 128)

  config.input.dataset = "market1501"
  config.input.data_dir = ""  # WORKDIR/data/tfds
  config.input.manual_dir = ""  # WORKDIR/data/synthetic
  config.input.num_identities = 16
  config.input.num_instances = 4
  config.input.num_workers = 0  # decoding 64x32 JPEGs in-process keeps up on 2 cores
  config.input.pad = 2  # 10 px at 256x128 ~ 2-3 px at 64x32
  config.input.erasing_prob = 0.0  # occlusion is already part of the synthetic data
  config.input.eval_batch_size = 128

  config.input.synthetic.generate = True
  config.input.synthetic.num_ids = 1100
  config.input.synthetic.num_train_ids = 1000
  config.input.synthetic.difficulty.blur = 0.5
  config.input.synthetic.difficulty.group_size = 2
  config.input.synthetic.difficulty.occlusion_prob = 0.1
  config.input.synthetic.difficulty.pose_jitter = 0.5

  # A short schedule scaled from the BoT recipe (warmup, one x0.1 step).
  config.optim.base_lr = 5e-3
  config.optim.warmup_epochs = 2
  config.optim.milestones = (32,)
  config.train.num_epochs = 40
  config.train.steps_per_epoch = 62  # 1,000 ids // P = 16
  config.train.log_every_steps = 200
  config.train.checkpoint_every_steps = 1000
  config.train.eval_every_epochs = 0  # evaluate at the end only

  config.eval.flip = True
  config.eval.compare_baselines = True
  return config
