"""User mistakes: the project's exception for them and how command-line entries print it.

A mistake the user can fix (a wrong flag, a missing or unreadable input file, an output
path that cannot be written, a refused overwrite) raises `UserError` (or a subclass)
with a one-line message naming the file / flag / field and the value. Every
command-line entry runs its `main` through `run` (or wraps it with `user_errors`), which
prints such an error as

  ERROR: <message>
  hint: <what to do>          (only when the error carries a hint)

on stderr and exits with status `EXIT_USER_ERROR` (2). absl flag-parsing errors and
`app.UsageError` take the same path. Any other exception is a bug or an environment
failure and keeps its traceback.

    from data_pipelines import errors

    def main(argv): ...
    if __name__ == "__main__":
      errors.run(main)

This module lives in `data_pipelines` (which never imports `fsaf_jax`) so that both
packages can use it.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """A mistake the user can fix; the message names the file / flag / field and value.

  Attributes:
    hint: optional second line saying what to do (printed as `hint: ...`).
  """

  def __init__(self, message: str, hint: str | None = None):
    super().__init__(message)
    self.hint = hint


def one_line(text: str) -> str:
  """`text` with its lines stripped and joined by spaces (blank lines dropped)."""
  return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def format_error(error: BaseException) -> str:
  """The `ERROR: ...` line (and `hint: ...` line, if any) printed for `error`."""
  message = one_line(str(error)) or type(error).__name__
  lines = [f"ERROR: {message}"]
  hint = getattr(error, "hint", None)
  if hint:
    lines.append(f"hint: {one_line(hint)}")
  return "\n".join(lines)


def exit_with(error: BaseException) -> None:
  """Prints `format_error(error)` to stderr and exits with status 2."""
  sys.stderr.flush()
  print(format_error(error), file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def user_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Decorator: `UserError` / `app.UsageError` raised by `main` -> ERROR line, exit 2."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> Any:
    try:
      return main(argv)
    except UserError as e:
      exit_with(e)
    except app.UsageError as e:
      exit_with(UserError(str(e), hint="run with --helpshort to see the usage and flags"))

  return wrapped


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a flag error printed as one ERROR line (exit 2)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    exit_with(UserError(str(e), hint="run with --helpshort to see the flags"))


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
  """`absl.app.run(main)` with user mistakes printed as one ERROR line and exit status 2.

  Args:
    main: the entry's main(argv).
    argv: command line (default sys.argv).
  """
  app.run(user_errors(main), argv=None if argv is None else list(argv), flags_parser=_parse_flags)


# --- Output paths, checked before any work starts. ----------------------------------------


def _is_remote(path: str) -> bool:
  return "://" in path


def _nearest_existing(path: str) -> str:
  """`path` or its nearest existing ancestor."""
  current = os.path.abspath(path)
  while not os.path.lexists(current):
    parent = os.path.dirname(current)
    if parent == current:
      break
    current = parent
  return current


def _read_only_mount(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def _check_can_create_in(path: str, what: str, flag: str) -> None:
  """Raises UserError unless the missing `path` can be created (its folders included)."""
  ancestor = _nearest_existing(path)
  if not os.path.isdir(ancestor):
    raise UserError(f"{flag}={path}: cannot create the {what}: {ancestor} is not a directory")
  if not os.access(ancestor, os.W_OK | os.X_OK) or _read_only_mount(ancestor):
    raise UserError(
      f"{flag}={path}: cannot create the {what}: directory {ancestor} is not writable",
      hint=f"choose a writable place for {flag}",
    )


def check_output_file(path: str | os.PathLike[str], flag: str) -> None:
  """Checks, creating nothing, that the file `path` can be written.

  Args:
    path: the output file (local; remote `scheme://` paths are not checked).
    flag: how the user gave it, for the message (e.g. '--out').

  Raises:
    UserError: `path` is a directory, or an existing file that is not writable, or its
      folder does not exist and cannot be created / is not writable.
  """
  path = os.path.expanduser(os.fspath(path))
  if not path:
    raise UserError(f"{flag} is empty: give the output file")
  if _is_remote(path):
    return
  if os.path.isdir(path):
    raise UserError(f"{flag}={path} is a directory; expected a file path (a file name in it)")
  if os.path.lexists(path):
    if not os.access(path, os.W_OK) or _read_only_mount(path):
      raise UserError(f"{flag}={path}: the file exists and is not writable")
    return
  _check_can_create_in(path, "file", flag)


def check_output_dir(path: str | os.PathLike[str], flag: str) -> None:
  """Checks, creating nothing, that the directory `path` exists writable or can be made.

  Args:
    path: the output directory (local; remote `scheme://` paths are not checked).
    flag: how the user gave it, for the message (e.g. '--outdir').

  Raises:
    UserError: `path` is a file, or a directory that is not writable, or cannot be
      created.
  """
  path = os.path.expanduser(os.fspath(path))
  if not path:
    raise UserError(f"{flag} is empty: give the output directory")
  if _is_remote(path):
    return
  if os.path.lexists(path):
    if not os.path.isdir(path):
      raise UserError(f"{flag}={path} is a file; expected a directory")
    if not os.access(path, os.W_OK | os.X_OK) or _read_only_mount(path):
      raise UserError(
        f"{flag}={path}: the directory is not writable",
        hint=f"choose a writable place for {flag}",
      )
    return
  _check_can_create_in(path, "directory", flag)
