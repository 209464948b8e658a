"""Stop requests from SIGTERM / SIGINT / SIGHUP, acted on at the next step boundary.

A preempted job (SIGTERM from a scheduler, Ctrl-C, a closed terminal) should not die
mid-step: the handler only records the signal, the training loop sees `stop.requested`
between steps, saves a checkpoint and returns. A second SIGINT raises KeyboardInterrupt at
once (for a loop that is stuck).

Multi-process: the signal may reach the processes at different steps, but all must
save at the same one; `StopOnSignal.agreed()` is the OR of every process's flag
(a collective: call it at the same steps on every process).
"""

from __future__ import annotations

import logging
import signal
import threading
import types

import jax
import numpy as np
from jax.experimental import multihost_utils

# SIGHUP: the terminal running the job was closed (not on Windows).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT) + (
  (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
)


class StopOnSignal:
  """Context manager installing handlers that turn signals into a stop request (for the
  signals that are not ignored: those stay ignored).

  Attributes:
    signum: the first signal received, or None.
  """

  def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
    self._signals = signals
    self._previous = {}
    self.signum: int | None = None

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    if self.signum is None:
      self.signum = signum
      logging.warning(
        "Received %s: stopping at the next step boundary after saving a checkpoint "
        "(Ctrl-C again to abort without saving)",
        signal.Signals(signum).name,
      )

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        # A signal the launcher set to be ignored stays ignored: `nohup` (SIGHUP) and a
        # script's `cmd &` (SIGINT) ask that the job survive a closed terminal / Ctrl-C.
        if signal.getsignal(s) != signal.SIG_IGN:
          self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()

  @property
  def requested(self) -> bool:
    """Whether this process received a stop signal."""
    return self.signum is not None

  def agreed(self) -> bool:
    """True if any process received a stop signal (all processes must call this)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))
