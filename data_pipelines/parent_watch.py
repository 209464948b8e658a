"""Worker processes that die with their parent, however the parent dies.

grain's worker processes (and through them the multiprocessing resource tracker, which
exits once every process holding its pipe is gone) outlive a parent killed with
SIGKILL: they hold their memory and shared memory until someone kills them. A worker
calls `die_with_parent()` once at start:

- on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)` is not used: the kernel sends it when
  the *thread* that started the worker ends, and grain starts workers from pool
  threads that may end while the parent lives;
- instead a daemon thread polls `os.getppid()` (every `POLL_SECONDS`): when the parent
  is gone the worker is re-parented (to init or a subreaper), and it exits at once with
  `os._exit` (no cleanup of a dead parent's queues). Portable (POSIX and Windows via
  `multiprocessing.parent_process()`).

A clean stop (SIGTERM / Ctrl-C of the parent, which closes its iterators) is unchanged.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

POLL_SECONDS = 0.5
EXIT_CODE = 70  # os.EX_SOFTWARE; not os.EX_* (missing on Windows)

_started = False


def _parent_pid() -> int | None:
  parent = multiprocessing.parent_process()
  if parent is not None and parent.pid is not None:
    return parent.pid
  return os.getppid() if hasattr(os, "getppid") else None


def _parent_gone(pid: int) -> bool:
  if hasattr(os, "getppid") and os.name == "posix":
    return os.getppid() != pid
  parent = multiprocessing.parent_process()  # pragma: no cover (Windows)
  return parent is not None and not parent.is_alive()


def _watch(pid: int, poll_seconds: float) -> None:
  while not _parent_gone(pid):
    time.sleep(poll_seconds)
  os._exit(EXIT_CODE)


def die_with_parent(poll_seconds: float = POLL_SECONDS) -> bool:
  """Starts the watchdog thread in this (worker) process; idempotent.

  Returns:
    True if a watchdog runs (False: no parent known, e.g. the main process).
  """
  global _started
  if _started:
    return True
  pid = _parent_pid()
  if pid is None or pid <= 1:
    return False
  if _parent_gone(pid):  # the parent died before we got here
    os._exit(EXIT_CODE)
  threading.Thread(
    target=_watch, args=(pid, poll_seconds), name="parent-watch", daemon=True
  ).start()
  _started = True
  return True
