"""When the training loop acts, and how fast it steps.

`periodic(step, every, total)` is big_vision's `itstime`: whether the loop logs, saves or
evaluates after `step` steps. `StepTimer` measures steps/s and images/s over the steps
since the last log line (the first step, which compiles, excluded).
"""

from __future__ import annotations

import time

import jax


def periodic(step: int, every: int, total: int | None = None) -> bool:
  """Whether an action every `every` steps (never if `every` <= 0) is due after `step`
  steps; with `total`, also after the last step.

  Args:
    step: the number of steps done (the train state's step).
    every: the interval in steps; 0 or less: never (but at `total`).
    total: the run's last step, or None (no action there).
  """
  return (every > 0 and step % every == 0) or (total is not None and step == total)


class StepTimer:
  """The step rate of the steps since `restart` (the first step, which compiles, excluded).

  Call `tick(metrics)` after each step (the first waits for its metrics, then the clock
  starts), `rates()` when logging and `restart()` after anything that is not a training
  step (a log line, an evaluation).
  """

  def __init__(self, batch_size: int):
    self._batch_size = batch_size
    self._start: float | None = None
    self._steps = 0

  def restart(self) -> None:
    self._start, self._steps = time.perf_counter(), 0

  def tick(self, metrics) -> None:
    """Counts a step; the first one's end (its `metrics` ready) starts the clock."""
    if self._start is None:
      jax.block_until_ready(metrics)
      self.restart()
    else:
      self._steps += 1

  def rates(self) -> dict[str, float]:
    """`{'images_per_s', 'steps_per_s'}` since `restart`, empty before a timed step."""
    elapsed = time.perf_counter() - self._start if self._start is not None else 0.0
    if not self._steps or elapsed <= 0:
      return {}
    return {
      "images_per_s": self._steps * self._batch_size / elapsed,
      "steps_per_s": self._steps / elapsed,
    }
