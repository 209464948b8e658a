"""User mistakes: the project's exception for them and how command-line entries print it.

A mistake the user can fix (a wrong flag, a missing or unreadable input file, an output
path that cannot be written, a refused overwrite) raises `UserError` (or a subclass)
with a one-line message naming the file / flag / field and the value. Every
command-line entry runs its `main` through `run` (or wraps it with `user_errors`), which
prints such an error as

  ERROR: <message>
  hint: <what to do>          (only when the error carries a hint)

on stderr and exits with status `EXIT_USER_ERROR` (2). `run` sends command-line
mistakes the same way: absl flag errors, `app.UsageError`, an unknown field or section
in a `--config.a.b=v` override (with a "did you mean" from the config's own fields), a
config file that does not exist. Ctrl-C (KeyboardInterrupt) ends with one
'Interrupted' line and status 130. A thread that cannot start or a MemoryError (a
`ulimit -v` too low) ends with one ERROR line naming the limit, status 1
(`check_address_space` refuses, before JAX starts, a limit at which JAX would abort).
Any other exception is a bug or an environment failure and keeps its traceback.
`check_output_file` / `check_output_dir` check output paths before any work starts,
creating nothing.

    from data_pipelines import errors

    def main(argv): ...
    if __name__ == "__main__":
      errors.run(main)

This module lives in `data_pipelines` (which never imports `fsaf_jax`) so that both
packages can use it.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import resource
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

EXIT_USER_ERROR = 2
EXIT_FAILURE = 1  # the environment failed (a resource limit), not the user's input
EXIT_INTERRUPTED = 128 + 2  # as a shell reports a process ended by SIGINT


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
  """Whether paths `a` and `b` name one file: equal once made absolute (`~` expanded),
  or both existing and the same file (links)."""
  a, b = (os.path.abspath(os.path.expanduser(os.fspath(p))) for p in (a, b))
  return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


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


def exit_with(error: BaseException) -> None:
  """Prints `format_error(error)` to stderr and exits with status 2."""
  sys.stderr.flush()
  print(format_error(error), file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def user_errors(main: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
  """Decorator: `UserError` / `app.UsageError` raised by `main` -> ERROR line, exit 2;
  `KeyboardInterrupt` (Ctrl-C) -> one 'Interrupted' line, exit 130, no traceback; a
  thread that cannot start or a MemoryError -> ERROR line naming `ulimit -v`, exit 1."""

  @functools.wraps(main)
  def wrapped(argv: list[str]) -> Any:
    try:
      return main(argv)
    except UserError as e:
      exit_with(e)
    except app.UsageError as e:
      exit_with(UserError(str(e), hint="run with --helpshort to see the usage and flags"))
    except KeyboardInterrupt:  # Ctrl-C (twice for train.py): the user's own stop
      print("Interrupted (Ctrl-C).", file=sys.stderr, flush=True)
      sys.exit(EXIT_INTERRUPTED)
    except (RuntimeError, MemoryError) as e:
      limit_error = resource_limit_error(e)
      if limit_error is None:
        raise
      sys.stderr.flush()
      print(format_error(limit_error), file=sys.stderr, flush=True)
      sys.exit(EXIT_FAILURE)

  return wrapped


# --- Resource limits (ulimit -v). --------------------------------------------------------

# Below this address-space limit JAX's CPU runtime aborts (C++ `Check failed` /
# segfault) before any Python handler runs: measured with `ulimit -v` on
# `import jax; jnp.ones(3).sum()` (aborts at 1.0 GB, runs at 1.5 GB).
MIN_ADDRESS_SPACE_BYTES = 3 * 2**29  # 1.5 GiB


def address_space_limit() -> str:
  """The process's address-space limit (`ulimit -v`, RLIMIT_AS), e.g. '1.00 GiB'."""
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft / 2**30:.2f} GiB"


def _limit_hint() -> str:
  return "raise the limit (ulimit -v unlimited, or a larger value) and run the command again"


def resource_limit_error(error: BaseException) -> UserError | None:
  """The one-line error for a thread that could not start or memory that ran out
  (`error` or its cause), naming the address-space limit; None for anything else."""
  seen = error
  while seen is not None:
    if isinstance(seen, MemoryError) or (
      isinstance(seen, RuntimeError) and "can't start new thread" in str(seen)
    ):
      what = "out of memory" if isinstance(seen, MemoryError) else "a thread could not start"
      return UserError(
        f"{what} ({type(seen).__name__}: {one_line(str(seen)) or 'no details'}); the "
        f"address-space limit (ulimit -v) is {address_space_limit()}",
        hint=_limit_hint(),
      )
    seen = seen.__cause__ or seen.__context__
  return None


def check_address_space(command: str) -> None:
  """Refuses, before JAX starts, an address-space limit below `MIN_ADDRESS_SPACE_BYTES`
  (JAX would abort without a message).

  Raises:
    UserError: naming the limit and the minimum.
  """
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE_BYTES:
    raise UserError(
      f"{command}: the address-space limit (ulimit -v) is {address_space_limit()}; JAX's "
      f"CPU runtime needs at least {MIN_ADDRESS_SPACE_BYTES / 2**30:.1f} GiB to start",
      hint=_limit_hint(),
    )


def _config_file_args(argv: Sequence[str]) -> list[tuple[str, str]]:
  """(`--flag=PATH[:param]`, PATH) of each config-file flag (ml_collections) in argv."""
  found = []
  for arg in argv[1:]:
    if not arg.startswith("--") or "=" not in arg:
      continue
    name, value = arg[2:].split("=", 1)
    if name not in flags.FLAGS:
      continue
    if type(flags.FLAGS[name].parser).__name__ != "ConfigFileFlagParser":
      continue
    found.append((arg, value.split(":", 1)[0]))
  return found


def _missing_config_file(argv: Sequence[str]) -> UserError | None:
  """The error for a config-file flag (ml_collections) `--flag=PATH[:param]` whose PATH
  is not a file (a file name holding ':' included), or None."""
  for arg, path in _config_file_args(argv):
    if os.path.isfile(path):
      continue
    if os.path.isfile(arg.split("=", 1)[1]):
      return UserError(
        f"{arg}: a config file name cannot contain ':' (what follows the first ':' is "
        "read as an argument of get_config())",
        hint="rename the file, or link it under a name without ':'",
      )
    return UserError(f"{arg}: no such config file")
  return None


def _config_argument_error(argv: Sequence[str], error: BaseException) -> UserError | None:
  """The error for `--config=PATH:argument` given to a config whose get_config() takes
  none, or None."""
  if "get_config() takes 0 positional arguments" not in str(error):
    return None
  for arg, path in _config_file_args(argv):
    if ":" in arg.split("=", 1)[1]:
      return UserError(
        f"{arg}: this config takes no ':argument' (its get_config() has no parameter)",
        hint=f"pass --{arg[2:].split('=', 1)[0]}={path} and set fields with "
        "--config.<field>=<value>",
      )
  return None


def _config_file_error(argv: Sequence[str], error: BaseException) -> UserError | None:
  """The one-line error for a config file that is not a Python `get_config()` module
  (another kind of file, a syntax error, no `get_config`), or None."""
  files = _config_file_args(argv)
  if not files:
    return None
  arg, path = files[-1]
  if not path.endswith(".py"):
    return UserError(
      f"{arg}: not a Python config file (a .py file defining get_config())",
      hint="pass one of configs/*.py, or a .py file of yours returning the config",
    )
  if isinstance(error, SyntaxError):
    where = f"{error.filename}, line {error.lineno}" if error.filename else arg
    text = (error.text or "").strip()
    return UserError(f"{arg}: syntax error in {where}: {error.msg}{': ' + text if text else ''}")
  if isinstance(error, AttributeError) and "get_config" in str(error):
    return UserError(f"{arg}: the config file defines no get_config() function")
  # A ValueError of get_config itself (e.g. configs/fsaf.py refusing its `:argument`),
  # which ml_collections wraps with its traceback: the config's own message.
  last = str(error).strip().splitlines()[-1] if str(error).strip() else ""
  if "Error whilst parsing config file" in str(error) and last.startswith("ValueError: "):
    return UserError(f"{arg}: {last.removeprefix('ValueError: ')}")
  return None


def _config_of(argv: Sequence[str], name: str) -> Any:
  """The ConfigDict of config flag `name`: its parsed value, else loaded from argv."""
  value = flags.FLAGS[name].value
  if value is not None:
    return value
  given = [a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")]
  path, _, param = given[-1].partition(":")
  spec = importlib.util.spec_from_file_location("_config_for_suggestion", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(param) if param else module.get_config()


def _unknown_field(argv: Sequence[str], override: str) -> tuple[str, str] | None:
  """(unknown field, ' (did you mean X?)' or '') of override `--cfg.a.b=v`, or None."""
  path = override[2:].split("=", 1)[0].split(".")
  try:
    node = _config_of(argv, path[0])
    for part in path[1:]:
      names = list(node.keys())
      if part not in names:
        close = difflib.get_close_matches(part, names, n=1, cutoff=0.5)
        return part, (f" (did you mean {close[0]!r}?)" if close else "")
      node = node[part]
  except Exception:  # the check is best effort: the caller falls back on the raw error
    return None
  return None


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with a command-line mistake printed as one ERROR line (exit 2).

  Mistakes: absl flag errors; an unknown config field or section in a `--config.a.b=v`
  override (with a "did you mean"); a config file that does not exist, is not a .py
  file, has a syntax error (file and line named) or defines no `get_config`. Anything
  else raised while parsing (e.g. an exception inside a config file's `get_config`)
  keeps its traceback.
  """
  missing_file = _missing_config_file(argv)
  if missing_file:
    exit_with(missing_file)
  overrides = [a for a in argv[1:] if a.startswith("--") and "." in a.split("=", 1)[0]]
  try:
    return flags.FLAGS(argv)
  except SyntaxError as e:
    config_error = _config_file_error(argv, e)
    if config_error is None:
      raise
    exit_with(config_error)
  except (flags.Error, KeyError, AttributeError, NameError) as e:
    config_error = _config_file_error(argv, e) or _config_argument_error(argv, e)
    if config_error is not None:
      exit_with(config_error)
    for override in overrides:
      if override[2:].split(".", 1)[0] not in flags.FLAGS:
        continue
      unknown = _unknown_field(argv, override)
      if unknown is not None:
        field, suggestion = unknown
        exit_with(
          UserError(
            f"{override}: unknown config field {field!r}{suggestion}",
            hint="run with --helpfull to see the config fields",
          )
        )
    if isinstance(e, flags.Error):
      exit_with(UserError(str(e), hint="run with --helpshort to see the flags"))
    raise


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


def _check_writable_dir(directory: str, flag: str, subject: str) -> None:
  """Raises UserError `'<subject> is not writable'` unless files can be made in `directory`."""
  if not os.access(directory, os.W_OK | os.X_OK) or _read_only_mount(directory):
    raise UserError(f"{subject} is not writable", hint=f"choose a writable place for {flag}")


def _check_can_create_in(path: str, what: str, flag: str) -> None:
  """Raises UserError unless the missing `path` can be created (its folders included)."""
  ancestor = _nearest_existing(path)
  if not os.path.isdir(ancestor):
    raise UserError(f"{flag}={path}: cannot create the {what}: {ancestor} is not a directory")
  _check_writable_dir(
    ancestor, flag, f"{flag}={path}: cannot create the {what}: directory {ancestor}"
  )


def _local_output(path: str | os.PathLike[str], flag: str, what: str) -> str | None:
  """`path` with `~` expanded, or None for a remote `scheme://` path (not checked).

  Raises:
    UserError: `path` is empty.
  """
  path = os.path.expanduser(os.fspath(path))
  if not path:
    raise UserError(f"{flag} is empty: give the output {what}")
  return None if _is_remote(path) else path


def _check_not_dangling(path: str, flag: str) -> None:
  """Raises UserError if `path` is a symbolic link whose target does not exist."""
  if os.path.islink(path) and not os.path.exists(path):
    raise UserError(
      f"{flag}={path} is a symbolic link to {os.readlink(path)}, which does not exist",
      hint="create the link's target, or remove the link",
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
  path = _local_output(path, flag, "file")
  if path is None:
    return
  _check_not_dangling(path, flag)
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
  path = _local_output(path, flag, "directory")
  if path is None:
    return
  _check_not_dangling(path, flag)
  if os.path.lexists(path):
    if not os.path.isdir(path):
      raise UserError(f"{flag}={path} is a file; expected a directory")
    _check_writable_dir(path, flag, f"{flag}={path}: the directory")
    return
  _check_can_create_in(path, "directory", flag)
