"""How every command reads a path the user gave: `~` expanded, remote paths kept.

A shell expands `~` only at the start of a word: `--out=~/x` reaches the program as
the text `~/x`, and the README itself writes `--data_dir=~/tensorflow_datasets`. Every
path flag (`DEFINE_path`), positional path and config path (`config.input.data_dir`,
`manual_dir`) goes through `resolve`, so that no command writes into a folder named
`~` under the current directory.

    _OUT = paths.DEFINE_path("out", None, "Output .npz.")   # _OUT.value: '~' expanded
    paths.resolve("~/runs/a") -> '/home/me/runs/a';  paths.resolve("gs://b/x") -> 'gs://b/x'

A leaf module (absl only), so that every package may use it.
"""

from __future__ import annotations

import os
import shutil

from absl import flags


def is_remote(path: str | os.PathLike[str]) -> bool:
  """Whether `path` is a `scheme://` path (gs://, s3://): never expanded or made absolute."""
  return "://" in os.fspath(path)


def resolve(path: str | os.PathLike[str]) -> str:
  """`path` with a leading `~` / `~user` expanded (a remote or empty path as given)."""
  path = os.fspath(path)
  if not path or is_remote(path):
    return path
  return os.path.expanduser(path)


def absolute(path: str | os.PathLike[str]) -> str:
  """`resolve(path)` made absolute (a remote or empty path as given)."""
  path = resolve(path)
  if not path or is_remote(path):
    return path
  return os.path.abspath(path)


def free_space(path: str | os.PathLike) -> str:
  """Free space on the disk holding `path` (or its nearest existing parent), e.g.
  '1.2 GB free', or 'free space unknown' for a remote path."""
  current = os.path.abspath(os.fspath(path))
  if is_remote(path):
    return "free space unknown"
  while not os.path.exists(current) and os.path.dirname(current) != current:
    current = os.path.dirname(current)
  try:
    free = shutil.disk_usage(current).free
  except OSError:
    return "free space unknown"
  for unit in ("bytes", "KB", "MB", "GB", "TB"):
    if free < 1024 or unit == "TB":
      return f"{free:.1f} {unit} free" if unit != "bytes" else f"{free} bytes free"
    free /= 1024
  return ""  # unreachable


class PathParser(flags.ArgumentParser):
  """absl parser of a path flag: the value is `resolve`d (also the default)."""

  def parse(self, argument: str) -> str | None:
    return None if argument is None else resolve(argument)

  def flag_type(self) -> str:
    return "string"


def DEFINE_path(  # noqa: N802 (absl's naming)
  name: str, default: str | None, help: str, **kwargs
) -> flags.FlagHolder[str]:
  """A string flag holding a path, `~` expanded (`resolve`); as `flags.DEFINE_string`."""
  return flags.DEFINE(
    PathParser(), name, default, help, serializer=flags.ArgumentSerializer(), **kwargs
  )
