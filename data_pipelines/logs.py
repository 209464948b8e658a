"""What the command-line entries print: the project's own lines, third-party ones on request.

A plain run of a command-line entry (train.py, eval.py, `python -m fsaf_jax.extract`,
...) shows the project's log records, warnings (one `WARNING: message` line each),
progress bars and tables. Log records
and Python warnings raised in third-party code (orbax, tensorflow_datasets, jax, grain,
etils, absl internals, ...) show only from ERROR up; with absl's `--verbosity=1` (or
higher) everything shows, as absl prints it. A record or warning is the project's when
the file it comes from is in `fsaf_jax/`, `data_pipelines/`, `configs/`, `benchmarks/`,
or is `train.py` / `eval.py` (records are told apart by file, not logger name: absl sends
every package's records through the one 'absl' logger). absl's default verbosity (0)
shows INFO records, so the project's `logging.info` progress lines print.

    from data_pipelines import errors, logs

    if __name__ == "__main__":
      logs.show_only_ours()
      errors.run(main)

The filter sits on the handlers, after the loggers' own filters, so a logger filter
that takes records off the log (e.g. `fsaf_jax.core.checkpoint_integrity`'s catcher of
failed saves) still sees every record. This module lives in `data_pipelines` (which
never imports `fsaf_jax`) so that both packages' entries can use it.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from absl import app, flags
from absl import logging as absl_logging

# Show third-party log records and warnings from this absl verbosity up.
THIRD_PARTY_VERBOSITY = 1

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUR_DIRS = ("fsaf_jax", "data_pipelines", "configs", "benchmarks")
_OUR_FILES = ("train.py", "eval.py")


def _our_prefixes(root: str) -> tuple[str, ...]:
  dirs = tuple(os.path.join(root, d) + os.sep for d in _OUR_DIRS)
  files = tuple(os.path.join(root, f) for f in _OUR_FILES)
  return dirs + files


_PREFIXES = tuple(dict.fromkeys(_our_prefixes(_ROOT) + _our_prefixes(os.path.realpath(_ROOT))))


def is_ours(path: str) -> bool:
  """Whether the source file `path` is the project's (see the module doc)."""
  path = os.path.abspath(path)
  if path.startswith(_PREFIXES):
    return True
  return os.path.realpath(path).startswith(_PREFIXES)


class OursOnly(logging.Filter):
  """Passes the project's records, and third-party ones from ERROR up or when `verbose`."""

  def __init__(self):
    super().__init__()
    self.verbose = False

  def filter(self, record: logging.LogRecord) -> bool:
    return self.verbose or record.levelno >= logging.ERROR or is_ours(record.pathname)


_FILTER = OursOnly()


class _OurWarnings:
  """A `warnings.showwarning` printing the project's warnings as one `WARNING: message`
  line (no file, line or source: they are for the user), third-party ones only when
  verbose (then every warning as Python prints it)."""

  def __init__(self, show):
    self.show = show

  def __call__(self, message, category, filename, lineno, file=None, line=None) -> None:
    if _FILTER.verbose:
      self.show(message, category, filename, lineno, file, line)
    elif is_ours(filename):
      print(f"WARNING: {' '.join(str(message).split())}", file=file or sys.stderr, flush=True)


def _apply_verbosity() -> None:
  """After flag parsing: verbose from `--verbosity=THIRD_PARTY_VERBOSITY` up."""
  _FILTER.verbose = flags.FLAGS["verbosity"].value >= THIRD_PARTY_VERBOSITY
  tfds = sys.modules.get("tensorflow_datasets")
  if tfds is not None and not _FILTER.verbose:
    tfds.disable_progress_bar()  # its per-split bars while a dataset is built


def show_only_ours() -> None:
  """Keeps third-party log records and warnings below ERROR off the console.

  Call once at a command-line entry's start, before `errors.run(main)` (absl.app): the
  verbosity is read once the flags are parsed. Until then, and at the default
  verbosity, only the project's records and warnings below ERROR print; from
  `--verbosity=1` everything does. Calling it again changes nothing.
  """
  for handler in (absl_logging.get_absl_handler(), logging.lastResort):
    if handler is not None and _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
  if not isinstance(warnings.showwarning, _OurWarnings):
    warnings.showwarning = _OurWarnings(warnings.showwarning)
    app.call_after_init(_apply_verbosity)
