r"""The paper's FSAF on DukeMTMC-reID (702 training identities): Table 1.

Target (the paper's figures, not ours; mAP / Rank-1, %): Table 1 "Our Method" 65.9 /
84.5. No run of ours is claimed.

Run (ImageNet weights: see the README, "Reproducing the paper and BoT"):
  python train.py --config=configs/fsaf_duke.py --workdir=workdirs/fsaf_duke \
    --config.input.manual_dir=/data/DukeMTMC-reID \
    --config.init.pretrained=imagenet
Steps: 120 epochs of BoT's sampler epoch (~240 P x K = 16 x 4 batches on DukeMTMC-reID's
16,522 training images: ~29,000 steps; the run card prints the exact count). Expected
time: not measured on a GPU/TPU; over a day on a 2-core CPU (README, Benchmarks).

Recipe: as `configs/fsaf_market.py` (the paper's model, BoT's hyper-parameters).
"""

import ml_collections

from configs import fsaf_market


def get_config() -> ml_collections.ConfigDict:
  """FSAF on DukeMTMC-reID."""
  config = fsaf_market.get_config()
  config.input.dataset = "dukemtmc_reid"
  return config
