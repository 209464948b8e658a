r"""The paper's FSAF model on DukeMTMC-reID (702 training identities).

Run:
  python train.py --config=configs/fsaf_duke.py --workdir=/tmp/fsaf_duke
Expected time: not measured on a GPU/TPU (none was available). On a 2-core CPU in
float32 the train step takes ~4.7 s at P x K = 16 x 4 (twice the batch-32 figure of
`python benchmarks/run.py`), so 120 epochs x 43 steps is ~7 h plus evaluations.
The paper's Table 2 figure for this row: not available here (see the README).
"""

import ml_collections

from configs import full


def get_config() -> ml_collections.ConfigDict:
  """FSAF `full` on DukeMTMC-reID."""
  config = full.get_config()
  config.input.dataset = "dukemtmc_reid"
  return config
