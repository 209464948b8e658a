"""Tells a command-line entry's console lines that come from third-party code (the
quiet-by-default tests of train.py / eval.py).

Judged from the text alone, independently of `fsaf_jax.core.cli`: an absl log line
(`I1130 12:00:00.000000 123 file.py:12] ...`) is the project's when `file.py` is the
name of one of the project's Python files; a Python warning (`/path/file.py:12:
UserWarning: ...`) when its path is in the project's folders; any line naming a
third-party package or absl's own pre-flag-parsing notice is third-party. Other lines
(tables, progress bars, `ERROR:` lines) are prints of the project.
"""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[2]
OUR_DIRS = ("fsaf_jax", "data_pipelines", "configs", "benchmarks")
OUR_FILES = ("train.py", "eval.py")
THIRD_PARTY_MARKS = (
  "orbax",
  "tensorflow_datasets",
  "site-packages",
  "WARNING:absl",
  "Logging before flag parsing",
)

_ABSL_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([^:\]\s]+):\d+\] ")
_WARNING_LINE = re.compile(r"^(\S+\.py):\d+: \w*Warning: ")


def our_file_names() -> set[str]:
  """Names of the project's Python files (folders `OUR_DIRS`, files `OUR_FILES`)."""
  names = set(OUR_FILES)
  for folder in OUR_DIRS:
    names.update(p.name for p in (REPO / folder).rglob("*.py"))
  return names


def _in_our_folders(path: str) -> bool:
  resolved = pathlib.Path(path).resolve()
  return any(resolved.is_relative_to(REPO / d) for d in OUR_DIRS) or resolved in {
    REPO / f for f in OUR_FILES
  }


def third_party_lines(text: str) -> list[str]:
  """The lines of `text` (a run's stdout + stderr) that come from third-party code."""
  ours = our_file_names()
  found = []
  for line in text.splitlines():
    absl_line = _ABSL_LINE.match(line)
    warning = _WARNING_LINE.match(line)
    if (
      any(mark in line for mark in THIRD_PARTY_MARKS)
      or (absl_line and absl_line.group(1) not in ours)
      or (warning and not _in_our_folders(warning.group(1)))
    ):
      found.append(line)
  return found
