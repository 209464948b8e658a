"""Waiting for an event under a generous ceiling; a ceiling that is hit fails the test with
what the processes were doing.

A test waits for an event (a process exits, a line is printed, a file appears), never for
a guessed time. The ceiling only catches a hang, so it is generous (minutes), and when it
is hit the failure shows the Python stacks of every thread:

- of a child process: `tests/conftest.py` sets `PYTHONFAULTHANDLER=1` for the session, so
  SIGABRT makes a Python child print all its threads' stacks on its stderr before it dies
  (`stacks_of`); its signal state (blocked, ignored, pending: /proc on Linux) is added;
- of this process (`wait_until`, polling threads of the process itself): from
  `sys._current_frames()`.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence

import psutil
import pytest

# Ceilings (seconds): a start-up or a short command, and a command that trains or compiles.
SHORT = 300
LONG = 1800

# How long a SIGABRT-ed child gets to write its stacks and exit.
_DUMP_SECONDS = 30
# Frames shown per thread of this process (the innermost; pytest's own are above them).
_FRAMES = 12


def thread_stacks() -> str:
  """Every thread's Python stack in this process, as text."""
  names = {t.ident: t.name for t in threading.enumerate()}
  parts = []
  for ident, frame in sys._current_frames().items():  # noqa: SLF001 (the documented way)
    stack = traceback.format_stack(frame)[-_FRAMES:]
    parts.append(
      f"Thread {names.get(ident, ident)} (innermost {_FRAMES} frames):\n{''.join(stack)}"
    )
  return "\n".join(parts)


def signal_state(pid: int) -> str:
  """The blocked / ignored / caught / pending signal masks of `pid` (Linux /proc), or ''."""
  try:
    with open(f"/proc/{pid}/status") as f:
      return "".join(
        line for line in f if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))
      )
  except OSError:
    return ""


def stacks_of(proc: subprocess.Popen, output: pathlib.Path | None = None) -> str:
  """Ends `proc` and its descendants with SIGABRT (each Python process prints its threads'
  stacks on its stderr) and returns that output (when stderr was captured: a pipe, or the
  file `output`) with their signal states; kills whatever is left."""
  try:
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
  except psutil.NoSuchProcess:
    family = []
  states = "".join(
    f"pid {p.pid} {' '.join(p.cmdline())[:200]}\n{signal_state(p.pid)}"
    for p in family
    if p.is_running()
  )
  for p in reversed(family):
    try:
      p.send_signal(signal.SIGABRT)
    except psutil.NoSuchProcess:
      pass
  try:
    out, err = proc.communicate(timeout=_DUMP_SECONDS)
  except subprocess.TimeoutExpired:
    out, err = "", ""
  except ValueError:  # its pipes were read and closed already (or never piped)
    proc.wait(timeout=_DUMP_SECONDS)
    out, err = "", ""
  for p in family:
    try:
      p.kill()
    except psutil.NoSuchProcess:
      pass
  if output is not None and output.exists():
    err = f"{err or ''}{output.read_text(errors='replace')}"
  text = "\n".join(
    s if isinstance(s, str) else s.decode(errors="replace") for s in (out or "", err or "") if s
  )
  return f"signal states:\n{states}\noutput and stacks (tail):\n{text[-12000:]}"


def wait(
  proc: subprocess.Popen, what: str, ceiling: float = SHORT, output: pathlib.Path | None = None
) -> int:
  """Waits for `proc` to exit; returns its exit status. At the ceiling, fails the test with
  `what` it was waiting for and the stacks of `proc` and its descendants (read from its
  stderr pipe, or from the file `output` its stderr goes to)."""
  try:
    return proc.wait(timeout=ceiling)
  except subprocess.TimeoutExpired:
    pass  # fails below, outside the handler (no chained TimeoutExpired in the report)
  pytest.fail(f"{what}: still running after {ceiling} s\n{stacks_of(proc, output)}", pytrace=False)


def communicate(
  proc: subprocess.Popen, what: str, ceiling: float = SHORT
) -> tuple[str | bytes | None, str | bytes | None]:
  """`proc.communicate()` (reads its pipes to the end: a full pipe cannot block it): its
  (stdout, stderr). At the ceiling, fails the test with `what` it was waiting for and the
  stacks of `proc` and its descendants."""
  try:
    return proc.communicate(timeout=ceiling)
  except subprocess.TimeoutExpired:
    pass  # fails below, outside the handler
  pytest.fail(f"{what}: still running after {ceiling} s\n{stacks_of(proc)}", pytrace=False)


def readline(proc: subprocess.Popen, what: str, ceiling: float = SHORT) -> str:
  """The next line `proc` prints on its stdout (a pipe), stripped. At the ceiling, fails
  the test with `what` it was waiting for and the stacks of `proc` and its descendants."""
  line = []
  reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
  reader.start()
  reader.join(ceiling)
  if reader.is_alive():
    pytest.fail(f"{what}: no line after {ceiling} s\n{stacks_of(proc)}", pytrace=False)
  return line[0].strip()


def run(
  cmd: Sequence[str], *, ceiling: float = SHORT, check: bool = False, **kwargs
) -> subprocess.CompletedProcess:
  """`subprocess.run(cmd, capture_output=True, text=True, **kwargs)` whose ceiling, when hit,
  fails the test with the command's stacks (instead of a bare TimeoutExpired); with
  `check`, a non-zero exit fails the test with the tail of its stderr."""
  kwargs.pop("capture_output", None)  # always, unless stdout / stderr say otherwise
  kwargs.setdefault("text", True)
  kwargs.setdefault("stdout", subprocess.PIPE)
  kwargs.setdefault("stderr", subprocess.PIPE)
  with subprocess.Popen(cmd, **kwargs) as proc:
    out, err = communicate(proc, " ".join(map(str, cmd)), ceiling)
  if check and proc.returncode:
    pytest.fail(
      f"{' '.join(map(str, cmd))}: exit status {proc.returncode}\n{(err or '')[-5000:]}",
      pytrace=False,
    )
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_until(
  condition: Callable[[], bool], what: str, ceiling: float = SHORT, poll: float = 0.01
) -> None:
  """Polls `condition()` (an event this process cannot be notified of, e.g. a folder that a
  background thread renames into place) until it is true. At the ceiling, fails the test
  with `what` it was waiting for and this process's thread stacks."""
  deadline = time.monotonic() + ceiling
  while not condition():
    if time.monotonic() > deadline:
      pytest.fail(f"{what}: not after {ceiling} s\n{thread_stacks()}", pytrace=False)
    time.sleep(poll)
