"""What every grain worker process of the input pipelines needs before it starts.

`ensure_absl_flags_parsed` (in the parent, before starting workers) and `worker_init`
(grain's `worker_init_fn`) are shared by `train_pipeline` and `eval_pipeline`.
"""

import signal
import threading
from multiprocessing import resource_tracker

from absl import flags

from data_pipelines import parent_watch

# Signals a terminal sends to every process of its foreground group: Ctrl-C and a
# closed terminal (hang-up). Only the main process acts on them (`StopOnSignal`).
GROUP_SIGNALS = tuple(getattr(signal, s) for s in ("SIGINT", "SIGHUP") if hasattr(signal, s))


def ensure_absl_flags_parsed() -> None:
  """Marks absl flags parsed if the program has not parsed them.

  grain reads its absl flags when it starts worker processes (in the parent and in the
  workers) and fails with `UnparsedFlagAccessError` otherwise; programs started with
  `absl.app.run` have parsed them already. Default flag values are used.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def start_resource_tracker() -> None:
  """Starts multiprocessing's resource tracker (in the parent, before the workers)
  deaf to a terminal's hang-up, so that it outlives workers killed with the terminal
  and unlinks the shared memory they leave (it ignores SIGINT / SIGTERM itself). An
  ignored signal stays ignored in the process started; a Python handler does not."""
  hup = getattr(signal, "SIGHUP", None)
  if hup is None or threading.current_thread() is not threading.main_thread():
    resource_tracker.ensure_running()
    return
  previous = signal.signal(hup, signal.SIG_IGN)
  try:
    resource_tracker.ensure_running()
  finally:
    signal.signal(hup, previous)


def worker_init(worker_index: int, worker_count: int) -> None:
  """Runs first in each grain worker process: flags parsed, the worker exits when the
  main process dies, even by SIGKILL (`parent_watch`): no orphaned workers, and it
  ignores the terminal's Ctrl-C / hang-up (`GROUP_SIGNALS`): the main process decides
  (saves, then closes its iterators, which ends the workers), instead of every worker
  printing a KeyboardInterrupt traceback or dying with its shared memory."""
  del worker_index, worker_count
  for s in GROUP_SIGNALS:
    signal.signal(s, signal.SIG_IGN)
  parent_watch.die_with_parent()
  ensure_absl_flags_parsed()
