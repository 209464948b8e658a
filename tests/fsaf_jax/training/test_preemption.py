"""`StopOnSignal`: SIGTERM, Ctrl-C and a closed terminal (SIGHUP) are stop requests."""

import os
import pathlib
import signal
import sys

import pytest

from tests.reference import ceiling

ROOT = pathlib.Path(__file__).resolve().parents[3]

PROGRAM = """
import os, signal, sys
from fsaf_jax.training.preemption import StopOnSignal

# Dispositions of a terminal's foreground job, whatever the test runner's are (started as a
# background job of a script, it ignores SIGINT), or `nohup`'s (argv[2] == 'ignored').
sig = int(sys.argv[1])
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
  signal.signal(s, signal.default_int_handler if s == signal.SIGINT else signal.SIG_DFL)
if sys.argv[2] == "ignored":
  signal.signal(sig, signal.SIG_IGN)

with StopOnSignal() as stop:
  os.kill(os.getpid(), sig)
  for _ in range(1000):  # the handler runs between bytecodes
    if stop.requested:
      break
  print(stop.signum, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_is_recorded_not_fatal(sig):
  # In a child process: a signal the handler misses would end the test run itself.
  result = run_program(sig, "default")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == str(int(sig))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_a_signal_the_launcher_ignores_stays_ignored(sig):
  """`nohup python train.py` (SIGHUP ignored) keeps training when its terminal closes; a
  script's `python train.py &` (SIGINT ignored) is not stopped by a Ctrl-C."""
  result = run_program(sig, "ignored")
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "None"


def run_program(sig: signal.Signals, disposition: str):
  return ceiling.run(
    [sys.executable, "-c", PROGRAM, str(int(sig)), disposition],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
  )
