"""A training loop whose loss turns NaN at a chosen step, for the NaN-stop tests."""

from collections.abc import Callable

import numpy as np

from fsaf_jax.training import train_loop


def poison_loss_at(monkeypatch, bad_step: int, before: Callable[[], None] | None = None) -> None:
  """Patches `train_loop.make_train_step` so that the `bad_step`-th call of the step
  (counted from 1 in this run) reports a NaN loss; `before()`, if given, runs just
  before that step's metrics are poisoned. The state itself stays finite."""
  make_train_step = train_loop.make_train_step

  def make_poisoned_step(*args, **kwargs):
    step_fn = make_train_step(*args, **kwargs)
    calls = {"n": 0}

    def poisoned(state, batch):
      state, metrics = step_fn(state, batch)
      calls["n"] += 1
      if calls["n"] == bad_step:
        if before is not None:
          before()
        metrics = dict(metrics, loss=metrics["loss"] * np.nan)
      return state, metrics

    return poisoned

  monkeypatch.setattr(train_loop, "make_train_step", make_poisoned_step)
