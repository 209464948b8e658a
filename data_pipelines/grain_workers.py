"""What every grain worker process of the input pipelines needs before it starts.

`ensure_absl_flags_parsed` (in the parent, before starting workers) and `worker_init`
(grain's `worker_init_fn`) are shared by `train_pipeline` and `eval_pipeline`.
"""

from absl import flags

from data_pipelines import parent_watch


def ensure_absl_flags_parsed() -> None:
  """Marks absl flags parsed if the program has not parsed them.

  grain reads its absl flags when it starts worker processes (in the parent and in the
  workers) and fails with `UnparsedFlagAccessError` otherwise; programs started with
  `absl.app.run` have parsed them already. Default flag values are used.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def worker_init(worker_index: int, worker_count: int) -> None:
  """Runs first in each grain worker process: flags parsed, and the worker exits when
  the main process dies, even by SIGKILL (`parent_watch`): no orphaned workers."""
  del worker_index, worker_count
  parent_watch.die_with_parent()
  ensure_absl_flags_parsed()
