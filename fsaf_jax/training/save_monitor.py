"""The save side of a run's checkpoints: manifests written, failed saves stopped in one line.

`SaveMonitor` follows the asynchronous saves of an orbax manager; once a save is
finalised it writes the step's sha256 manifest (process 0,
`fsaf_jax.core.checkpoint_integrity.write_manifest`), and a save that failed (orbax logs
the error and goes on) raises `CheckpointSaveError` at the next poll (every step) with
the cause, the path and the free space, after removing what the save left behind. Its
log hooks keep that one line alone: orbax's logged traceback is taken off the log
(`_SaveErrorCatcher`), and so are the tracebacks tensorstore and asyncio print for each
write cut short (`_QuietClosedLoop`, `_DropUnretrieved`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp
from etils import epath

from fsaf_jax.core.checkpoint_integrity import exception_line, free_space, write_manifest

_TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointSaveError(OSError):
  """A checkpoint could not be written (disk full, no permission, ...): one line with
  the cause, the path and the free space."""


class _SaveErrorCatcher(logging.Filter):
  """Takes orbax's logged save failures (a traceback, then it goes on) off the log and
  keeps the exception, to report it in one line."""

  def __init__(self):
    super().__init__()
    self.errors: list[BaseException] = []

  def filter(self, record: logging.LogRecord) -> bool:
    if (
      record.levelno >= logging.ERROR
      and f"{os.sep}orbax{os.sep}" in record.pathname
      and record.exc_info
      and record.exc_info[1] is not None
    ):
      self.errors.append(record.exc_info[1])
      return False
    return True


class _QuietClosedLoop:
  """`sys.unraisablehook` dropping the `RuntimeError('Event loop is closed')` that
  tensorstore reports for every write still in flight when a failed save's event loop
  is closed (dozens of tracebacks after one disk-full error); others pass through."""

  def __init__(self):
    self.dropped = 0
    self._previous = None

  def __call__(self, unraisable) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      self.dropped += 1
      return
    (self._previous or sys.__unraisablehook__)(unraisable)

  def install(self) -> None:
    self._previous, sys.unraisablehook = sys.unraisablehook, self

  def uninstall(self) -> None:
    if sys.unraisablehook is self:
      sys.unraisablehook = self._previous or sys.__unraisablehook__


class _DropUnretrieved(logging.Filter):
  """Drops asyncio's 'exception was never retrieved' records: after a failed save, each
  write cut short logs one (with a traceback) when it is collected, up to exit."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in record.getMessage()


def _remove_settled(path: epath.Path, *, settle: float = 0.5, patience: float = 10.0) -> None:
  """Removes the folder `path` and makes sure it stays removed.

  After a failed save, orbax's metadata thread may still write `_CHECKPOINT_METADATA`
  into the step's temporary folder while it is being removed (the removal then leaves
  the folder behind with that one file): remove again until the folder has stayed
  absent for `settle` seconds, for at most `patience` seconds.
  """
  deadline = time.monotonic() + patience
  while True:
    shutil.rmtree(os.fspath(path), ignore_errors=True)
    if not path.exists():
      time.sleep(settle)
      if not path.exists() or time.monotonic() > deadline:
        return
    elif time.monotonic() > deadline:
      return
    time.sleep(0.05)


class SaveMonitor:
  """Follows the asynchronous saves of an orbax manager (see the module doc).

  Call `started(step)` after each `manager.save`, `poll()` every training step (cheap:
  a flag read while a save runs, nothing otherwise) and `finish()` after
  `manager.wait_until_finished()`-worthy moments (end of run). Only process 0 writes
  manifests; every process raises on a failed save it can see.
  """

  def __init__(self, manager: ocp.CheckpointManager, *, write_manifests: bool = True):
    self._manager = manager
    self._write = write_manifests
    self._pending: list[int] = []
    self._catcher = _SaveErrorCatcher()
    logging.getLogger("absl").addFilter(self._catcher)
    self._quiet_loop = _QuietClosedLoop()
    self._quiet_loop.install()
    self._failed = False

  @property
  def directory(self) -> epath.Path:
    return epath.Path(self._manager.directory)

  def started(self, step: int) -> None:
    self._pending.append(int(step))

  def poll(self) -> None:
    """Finishes the pending saves if orbax is done with them (raises if one failed)."""
    if self._pending and not self._manager.is_saving_in_progress():
      self.finish()

  def finish(self) -> None:
    """Waits for the pending saves, checks each was written, writes their manifests.

    Raises:
      CheckpointSaveError: a save failed; its partial folders are removed first.
    """
    if not self._pending:
      return
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except KeyboardInterrupt:
      # Ctrl-C twice (abort without saving): the save in flight is left to orbax, which
      # completes it when the manager is closed (or a new run removes its temporary
      # folder); removing it here would fail orbax's finalize thread with a traceback.
      self._pending.clear()
      self._catcher.errors.clear()
      raise
    except Exception as e:  # noqa: BLE001 (any failure of the save is reported as one)
      self._catcher.errors.append(e)
    pending, self._pending = self._pending, []
    for step in pending:
      step_dir = self.directory / str(step)
      error = self._catcher.errors[0] if self._catcher.errors else None
      if error is None and not step_dir.is_dir():
        error = FileNotFoundError(f"{step_dir} was not written")
      if error is None and self._write and jax.process_index() == 0:
        try:
          write_manifest(step_dir)
        except OSError as e:
          error = e
      if error is not None:
        self._catcher.errors.clear()
        self._raise(step, error)

  def _raise(self, step: int, error: BaseException) -> None:
    self._failed = True
    logging.getLogger("asyncio").addFilter(_DropUnretrieved())
    removed = self.remove_partial(step)
    raise CheckpointSaveError(
      f"saving checkpoint step {step} to {self.directory} failed: {exception_line(error)}; "
      f"{free_space(self.directory)} there"
      + (f"; removed the partial {', '.join(removed)}" if removed else "")
      + "; the run stopped, the previous checkpoints are intact: free space (or fix the "
      "cause) and run the same command to resume"
    ) from None

  def remove_partial(self, step: int) -> list[str]:
    """Removes `step`'s folder and orbax temporary folders (process 0). Returns names."""
    removed = []
    if jax.process_index() != 0 or not self.directory.exists():
      return removed
    for path in self.directory.iterdir():
      if path.name == str(step) or (_TMP_MARKER in path.name and path.name.startswith(f"{step}.")):
        _remove_settled(path)
        removed.append(path.name)
    if removed:
      self._manager.reload()
    return removed

  def close(self) -> None:
    logging.getLogger("absl").removeFilter(self._catcher)
    if not self._failed:  # after a failure, writes cut short may still report until exit
      self._quiet_loop.uninstall()
