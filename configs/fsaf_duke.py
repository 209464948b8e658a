r"""The paper's FSAF model on DukeMTMC-reID (702 training identities).

Run:
  python train.py --config=configs/fsaf_duke.py --workdir=/tmp/fsaf_duke
Expected time: not measured yet.
"""

import ml_collections

from configs import full


def get_config() -> ml_collections.ConfigDict:
  """FSAF `full` on DukeMTMC-reID."""
  config = full.get_config()
  config.input.dataset = "dukemtmc_reid"
  return config
