"""`StopOnSignal`: SIGTERM, Ctrl-C and a closed terminal (SIGHUP) are stop requests."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]

PROGRAM = """
import os, signal, sys
from fsaf_jax.training.preemption import StopOnSignal

with StopOnSignal() as stop:
  os.kill(os.getpid(), int(sys.argv[1]))
  for _ in range(1000):  # the handler runs between bytecodes
    if stop.requested:
      break
  print(stop.signum, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_is_recorded_not_fatal(sig):
  # In a child process: a signal the handler misses would end the test run itself.
  result = subprocess.run(
    [sys.executable, "-c", PROGRAM, str(int(sig))],
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == str(int(sig))
