r"""The paper's FSAF model on Market-1501 (751 training identities); = configs/full.py.

Run:
  python train.py --config=configs/fsaf_market.py --workdir=/tmp/fsaf_market
Expected time: not measured yet.
"""

import ml_collections

from configs import full


def get_config() -> ml_collections.ConfigDict:
  """FSAF `full` on Market-1501."""
  config = full.get_config()
  config.input.dataset = "market1501"
  return config
