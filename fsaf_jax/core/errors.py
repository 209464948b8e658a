"""User mistakes: the project's exception family and its one-line form.

A mistake the user can fix (a wrong flag, a missing or unreadable input file, an output
path that cannot be written, a refused overwrite) raises `UserError` (or a subclass)
with a one-line message naming the file / flag / field and the value. `format_error`
gives the lines a command prints for it:

  ERROR: <message>
  hint: <what to do>          (only when the error carries a hint)

How a command-line entry prints it and exits is `fsaf_jax.core.cli`. This module is a
leaf (it imports nothing of the project), so every layer may raise these errors.
"""

from __future__ import annotations


class UserError(ValueError):
  """A mistake the user can fix; the message names the file / flag / field and value.

  Attributes:
    hint: optional second line saying what to do (printed as `hint: ...`).
  """

  def __init__(self, message: str, *, hint: str | None = None):
    super().__init__(message)
    self.hint = hint


class InputNotFoundError(UserError, FileNotFoundError):
  """A file or folder the user named does not exist or holds nothing usable."""


class OutputExistsError(UserError, FileExistsError):
  """An output would replace or mix with something already there (refused)."""


def one_line(text: str) -> str:
  """`text` with its lines stripped and joined by spaces (blank lines dropped)."""
  return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def format_error(error: BaseException) -> str:
  """The `ERROR: ...` line (and `hint: ...` line, if any) printed for `error`; an error
  whose class sets `multiline = True` (e.g. one line per differing config field) keeps
  its lines."""
  text = str(error).strip() if getattr(error, "multiline", False) else one_line(str(error))
  message = text or type(error).__name__
  lines = [f"ERROR: {message}"]
  hint = getattr(error, "hint", None)
  if hint:
    lines.append(f"hint: {one_line(hint)}")
  return "\n".join(lines)
