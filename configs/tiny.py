r"""Tiny FSAF (same code as the paper's model, small widths, 64x32 input): tests, CPU demo.

Run:
  python train.py --config=configs/tiny.py --workdir=/tmp/fsaf_tiny
Expected time: the model and step compile in seconds and each step takes milliseconds on
a CPU; the data are whatever `config.input.dataset` names (`configs/demo.py` is the
runnable end-to-end tiny job: a few minutes, README).
"""

import ml_collections

from configs.base import get_base_config


def get_config() -> ml_collections.ConfigDict:
  """FSAF `full` structure (IBN-a, MHSA in Conv4_x/Conv5_x, ECA, fusion), tiny widths."""
  config = get_base_config()
  config.model.stage_sizes = (2, 2, 2, 2)
  config.model.stem_width = 8
  config.model.widths = (8, 16, 32, 64)
  config.model.num_heads = 2
  config.input.image_size = (64, 32)
  config.input.num_identities = 4
  config.input.num_instances = 2
  config.input.eval_batch_size = 16
  # No ImageNet weights exist for the tiny widths: random initialisation on purpose.
  config.init.pretrained = "scratch"
  return config
