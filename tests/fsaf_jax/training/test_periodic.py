"""periodic (big_vision's itstime) against the loop's former modulo arithmetic, and the
step timer's rates on a fake clock."""

import pytest

from fsaf_jax.training import periodic as periodic_lib
from fsaf_jax.training.periodic import StepTimer, periodic


@pytest.mark.parametrize("every, total", [(1, 7), (3, 10), (4, 8), (0, 5), (-2, 5)])
def test_periodic_is_every_nth_step_and_the_last(every, total):
  due = [s for s in range(total + 1) if periodic(s, every, total)]
  want = sorted({s for s in range(total + 1) if every > 0 and s % every == 0} | {total})
  assert due == want
  assert [s for s in range(1, total + 1) if periodic(s, every)] == [
    s for s in range(1, total + 1) if every > 0 and s % every == 0
  ]


def test_step_timer_skips_the_compiling_step(monkeypatch):
  now = {"t": 100.0}
  monkeypatch.setattr(periodic_lib.time, "perf_counter", lambda: now["t"])
  timer = StepTimer(batch_size=64)
  assert timer.rates() == {}
  now["t"] = 130.0
  timer.tick({})  # the first step: compiles; the clock starts at its end
  assert timer.rates() == {}
  for _ in range(4):
    now["t"] += 0.5
    timer.tick({})
  assert timer.rates() == pytest.approx({"images_per_s": 4 * 64 / 2.0, "steps_per_s": 2.0})
  timer.restart()
  assert timer.rates() == {}
