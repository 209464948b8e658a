"""Checkpoints that can be trusted: a checksum per step, checked saves, damage named.

orbax checks the structure of what it reads but not the content: its zarr3 shards carry
a crc32c of their index only, so flipped bytes in the weights restore silently, and a
truncated or garbled file surfaces as a long tensorstore / JSON traceback naming no
checkpoint. This module adds:

- a manifest `<step>/sha256sums.json` written once the save is finalised:
  `{"version": 1, "algorithm": "sha256", "files": {relative path: {"size", "sha256"}}}`
  over every file of the step folder; `verify_manifest` re-hashes them on restore. A
  step without a manifest (a run killed between the save and the manifest, or saved by
  an older version) is checked by restoring it: it must read and hold finite values;
- `DamagedCheckpointError`, one line naming the step folder and what is wrong;
- `free_space` (`data_pipelines.paths.free_space`, the one for every write error), the
  free-space phrase of the one-line write errors (the training run's
  `fsaf_jax.training.save_monitor.SaveMonitor` writes the manifests and reports failed
  saves; the evaluation writes its results);
- `newest_intact`: walks steps newest first and returns the first one a check accepts,
  with the damaged ones it skipped (`describe_skipped` makes the warning line).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from data_pipelines.errors import UserError
from data_pipelines.paths import free_space  # noqa: F401 (the phrase of write errors)
from fsaf_jax.core.whole_file import write_whole

MANIFEST_FILE = "sha256sums.json"
MANIFEST_VERSION = 1
DAMAGED_SUBDIR = "damaged_checkpoints"
_CHUNK = 1 << 20

T = TypeVar("T")


class DamagedCheckpointError(UserError):
  """A checkpoint step cannot be trusted: a checksum differs, a file is missing or
  unreadable, or it holds non-finite values. The message names the step folder."""

  def __init__(self, where: str | os.PathLike, reason: str, message: str | None = None):
    self.where = os.fspath(where)
    self.reason = _one_line(reason)
    super().__init__(message or f"checkpoint {self.where} is damaged: {self.reason}")


def all_damaged_error(
  directory: str | os.PathLike, damaged: Sequence[tuple[int, DamagedCheckpointError]], hint: str
) -> DamagedCheckpointError:
  """The error for a checkpoints directory none of whose steps is intact."""
  reason = f"every checkpoint is damaged ({reasons(damaged)})"
  return DamagedCheckpointError(
    directory,
    reason,
    f"every checkpoint in {os.fspath(directory)} is damaged "
    f"({reasons(damaged)}){': ' + hint if hint else ''}",
  )


def _one_line(text: str, limit: int = 300) -> str:
  line = " ".join(str(text).split())
  return line if len(line) <= limit else line[: limit - 3] + "..."


def exception_line(e: BaseException) -> str:
  """`Type: first line` of `e`, without orbax's pointer to the TensorStore spec dump."""
  text = str(e).strip().splitlines()
  first = (text[0] if text else "").split(" See full TensorStore details", 1)[0]
  return _one_line(f"{type(e).__name__}: {first}")


# --- Manifests. ---------------------------------------------------------------------------


def _sha256(path: epath.Path) -> tuple[int, str]:
  digest, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
      size += len(chunk)
  return size, digest.hexdigest()


def _files(step_dir: epath.Path) -> list[str]:
  """Relative paths (posix) of the files under `step_dir`, the manifest excluded, sorted."""
  root = os.fspath(step_dir).rstrip("/")
  out = []
  for folder, _, names in step_dir.walk():
    prefix = os.fspath(folder).rstrip("/")[len(root) + 1 :].replace(os.sep, "/")
    for name in names:
      rel = f"{prefix}/{name}" if prefix else name
      # The manifest, and its temporary file if a write of it was cut short
      # (`whole_file.write_whole`; older versions wrote `<manifest>.tmp`).
      if rel not in (MANIFEST_FILE, MANIFEST_FILE + ".tmp") and not rel.startswith(
        f".{MANIFEST_FILE}.tmp"
      ):
        out.append(rel)
  return sorted(out)


def write_manifest(step_dir: str | os.PathLike) -> epath.Path:
  """Hashes every file of the finalised checkpoint `step_dir` into its manifest.

  The manifest is written to a temporary name and renamed, so it is whole or absent.

  Returns:
    The manifest's path, `step_dir/sha256sums.json`.
  """
  step_dir = epath.Path(step_dir)
  files = {}
  for rel in _files(step_dir):
    size, digest = _sha256(step_dir / rel)
    files[rel] = {"size": size, "sha256": digest}
  manifest = {"version": MANIFEST_VERSION, "algorithm": "sha256", "files": files}
  return write_whole(
    step_dir / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True) + "\n"
  )


def has_manifest(step_dir: str | os.PathLike) -> bool:
  return (epath.Path(step_dir) / MANIFEST_FILE).exists()


def verify_manifest(step_dir: str | os.PathLike) -> bool:
  """Checks the files of `step_dir` against its manifest.

  Returns:
    True if the manifest is there and every file matches, False if there is no
    manifest (the caller checks the step by restoring it).

  Raises:
    DamagedCheckpointError: the folder is missing, the manifest unreadable, or a file
      missing / of another size / another sha256 (the first such file is named).
  """
  step_dir = epath.Path(step_dir)
  if not step_dir.is_dir():
    raise DamagedCheckpointError(step_dir, "the folder does not exist")
  path = step_dir / MANIFEST_FILE
  if not path.exists():
    return False
  try:
    manifest = json.loads(path.read_text())
    files = manifest["files"]
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(files, dict):
      raise ValueError(f"unknown manifest version {manifest.get('version')!r}")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise DamagedCheckpointError(step_dir, f"its {MANIFEST_FILE} is unreadable ({e})") from None
  for rel, expected in sorted(files.items()):
    file = step_dir / rel
    if not file.exists():
      raise DamagedCheckpointError(step_dir, f"{rel} is missing")
    size, digest = _sha256(file)
    if size != expected.get("size"):
      raise DamagedCheckpointError(
        step_dir, f"{rel} has {size} bytes, {expected.get('size')} when saved"
      )
    if digest != expected.get("sha256"):
      raise DamagedCheckpointError(step_dir, f"{rel} differs from when it was saved (sha256)")
  return True


def first_non_finite(tree: Any) -> str | None:
  """The key path of the first floating-point leaf of `tree` holding NaN or inf, or None.

  Leaves may be numpy or (replicated / sharded) jax arrays; one device sync in all.
  """
  leaves = [
    (path, x)
    for path, x in jax.tree_util.tree_leaves_with_path(tree)
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  if not leaves:
    return None
  finite = np.asarray(jax.device_get([jnp.all(jnp.isfinite(jnp.asarray(x))) for _, x in leaves]))
  bad = np.nonzero(~finite)[0]
  return None if bad.size == 0 else jax.tree_util.keystr(leaves[bad[0]][0])


def check_finite_checkpoint(tree: Any, where: str | os.PathLike, what: str) -> None:
  """Raises DamagedCheckpointError if a floating leaf of `tree` (`what`) is not finite."""
  bad = first_non_finite(tree)
  if bad is not None:
    raise DamagedCheckpointError(where, f"{what}{bad} holds NaN or inf")


def as_damage(where: str | os.PathLike, error: Exception) -> DamagedCheckpointError:
  """`error` raised while reading checkpoint `where`, as one DamagedCheckpointError."""
  if isinstance(error, DamagedCheckpointError):
    return error
  return DamagedCheckpointError(where, f"it cannot be read ({exception_line(error)})")


# --- Choosing a checkpoint. ---------------------------------------------------------------


def newest_intact(
  steps: Iterable[int], check: Callable[[int], T]
) -> tuple[int | None, T | None, list[tuple[int, DamagedCheckpointError]]]:
  """The newest step `check` accepts.

  Args:
    steps: candidate steps (any order).
    check: `check(step)` returns a value (e.g. the restored state) or raises
      DamagedCheckpointError; other exceptions propagate.

  Returns:
    (step, check's value, [(damaged step, its error)] newest first); (None, None, all
    damaged) if no step passes.
  """
  damaged = []
  for step in sorted(steps, reverse=True):
    try:
      return step, check(step), damaged
    except DamagedCheckpointError as e:
      damaged.append((step, e))
  return None, None, damaged


def reasons(damaged: Sequence[tuple[int, DamagedCheckpointError]]) -> str:
  """'step 120: <reason>; step 110: <reason>' of `newest_intact`'s damaged list."""
  return "; ".join(f"step {s}: {e.reason}" for s, e in damaged)


def describe_skipped(
  damaged: Sequence[tuple[int, DamagedCheckpointError]], used: int, action: str
) -> str:
  """One line: which steps were skipped as damaged and why, and which step is `action`."""
  noun = "checkpoint" if len(damaged) == 1 else "checkpoints"
  steps = ", ".join(str(s) for s, _ in damaged)
  where = os.path.dirname(damaged[0][1].where)
  return f"damaged {noun} {steps} in {where} skipped ({reasons(damaged)}); {action} step {used}"


def set_aside(step_dir: str | os.PathLike, workdir: str | os.PathLike) -> epath.Path:
  """Moves a damaged step folder to `workdir/damaged_checkpoints/<step>[-n]` (kept, out of
  the way of new saves). Returns the new path."""
  step_dir = epath.Path(step_dir)
  target_root = epath.Path(workdir) / DAMAGED_SUBDIR
  target_root.mkdir(parents=True, exist_ok=True)
  target, n = target_root / step_dir.name, 1
  while target.exists():
    target, n = target_root / f"{step_dir.name}-{n}", n + 1
  step_dir.rename(target)
  return target
