"""One training run per work directory: `WORKDIR/train.lock`.

    with WorkdirLock(workdir):
      ...  # a second train.py on the same workdir is refused meanwhile

The lock is an advisory `fcntl.flock` on `WORKDIR/train.lock`, which holds the owner's
pid, host and start time. The kernel releases it when the owner exits, however it
exits (SIGKILL included), so a lock left by a killed run is simply taken over (with a
warning naming the dead pid). A second run is refused with `WorkdirLockedError` naming
the pid that holds it. Where `fcntl` is missing (Windows), the file alone is the lock:
it is taken over when the pid it names no longer runs on this host. The file stays
(emptied) after a run: removing it could let two runs lock two different files.

Remote work dirs (`gs://...`) are not locked.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
from typing import IO

from data_pipelines.errors import UserError

try:
  import fcntl
except ImportError:  # pragma: no cover (Windows)
  fcntl = None

LOCK_FILE = "train.lock"


class WorkdirLockedError(UserError):
  """Another training run owns the work directory (the message names its pid)."""


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, another user's
    return True
  except OSError:
    return False
  return True


def _read_owner(file: IO[str]) -> dict:
  file.seek(0)
  try:
    owner = json.loads(file.read() or "{}")
  except ValueError:
    return {}
  return owner if isinstance(owner, dict) else {}


class WorkdirLock:
  """Holds `WORKDIR/train.lock` while in the `with` block (see the module doc).

  Args:
    workdir: the work directory (must exist).
    enabled: False = a no-op (processes other than 0 of a multi-process run).
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.enabled = enabled and "://" not in self.workdir
    self._file: IO[str] | None = None

  def acquire(self) -> None:
    """Takes the lock.

    Raises:
      WorkdirLockedError: a live process holds it.
      UserError: the work directory cannot be written.
    """
    if not self.enabled or self._file is not None:
      return
    try:
      file = open(self.path, "a+")  # noqa: SIM115 (held until release)
    except OSError as e:
      raise UserError(
        f"--workdir={self.workdir}: cannot write in it ({e.strerror or e})",
        hint="choose a writable --workdir",
      ) from None
    try:
      previous = self._lock(file)
    except BaseException:
      file.close()
      raise
    if previous.get("pid") and previous.get("pid") != os.getpid():
      logging.warning(
        "Took over %s from pid %s (started %s), which no longer runs",
        self.path,
        previous.get("pid"),
        previous.get("started", "?"),
      )
    file.seek(0)
    file.truncate()
    owner = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    file.write(json.dumps(owner) + "\n")
    file.flush()
    self._file = file

  def _lock(self, file: IO[str]) -> dict:
    """Locks `file`; returns the previous owner's record ({} if none)."""
    if fcntl is not None:
      try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          raise
        self._refuse(_read_owner(file))
      return _read_owner(file)
    owner = _read_owner(file)  # pragma: no cover (no fcntl)
    pid = owner.get("pid")
    if pid and pid != os.getpid() and owner.get("host") == socket.gethostname():
      if _pid_alive(int(pid)):
        self._refuse(owner)
    return owner

  def _refuse(self, owner: dict) -> None:
    who = f"pid {owner.get('pid', '?')}"
    if owner.get("host") and owner.get("host") != socket.gethostname():
      who += f" on {owner['host']}"
    raise WorkdirLockedError(
      f"--workdir={self.workdir} is in use by another training run ({who}, started "
      f"{owner.get('started', '?')}; lock {self.path})",
      hint="wait for that run to end or stop it (it saves on SIGTERM / Ctrl-C), or use "
      "another --workdir",
    )

  def release(self) -> None:
    if self._file is None:
      return
    try:
      self._file.seek(0)
      self._file.truncate()
      self._file.flush()
    except OSError:
      pass
    if fcntl is not None:
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
    self._file.close()
    self._file = None

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def remove_unused_workdir(workdir: str | os.PathLike) -> bool:
  """Removes `workdir` if it holds nothing but an unheld `train.lock` (a fresh run
  refused before writing anything). Returns whether it was removed."""
  workdir = os.fspath(workdir)
  lock = WorkdirLock(workdir)
  try:
    if set(os.listdir(workdir)) - {LOCK_FILE}:
      return False
    lock.acquire()  # no other run holds it while it is removed
    os.remove(lock.path)
    os.rmdir(workdir)
  except (OSError, UserError):  # another run came in, or no permission: leave it
    return False
  finally:
    lock.release()
  return True
