"""`train.py` with the test-side batch-index log (`batch_index_log.BatchIndexLog`) as its
training loop's `on_step` hook, for the subprocess resume tests:

  python -m tests.reference.train_with_batch_log --config=... --workdir=... [--config.x=...]

Same flags, output and exit codes as `train.py` (it runs `train.main`); it also writes
`WORKDIR/batch_indices/process_<i>.jsonl`.
"""

from collections.abc import Sequence

from absl import flags

import train
from fsaf_jax.core import cli
from tests.reference.batch_index_log import BatchIndexLog


def main(argv: Sequence[str]) -> None:
  train.main(argv, on_step=BatchIndexLog(flags.FLAGS.workdir))


if __name__ == "__main__":
  cli.show_only_ours()  # as train.py
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
