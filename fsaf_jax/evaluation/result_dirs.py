"""Where evaluation results live: one folder per trained step, and a pointer to the newest.

    OUTDIR/eval/step_<N>/metrics.json, ranked_list.png, baselines.json
    OUTDIR/eval/latest        one line: the folder name of the newest step, 'step_<N>'

Evaluating another step (an older checkpoint with `eval.py --checkpoint=...`) writes its
own folder and never touches another step's results. `latest` is a small text file, not
a symbolic link, so that it works on every OS and on remote storage (gs://); it names
the highest step evaluated so far, so evaluating an older checkpoint later does not
move it. Variables evaluated without a step (`step=None`) go to `eval/step_unknown/`
and never become `latest`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

from etils import epath

from fsaf_jax.core import cli, errors
from fsaf_jax.core.paths import free_space
from fsaf_jax.core.whole_file import write_whole

EVAL_SUBDIR = "eval"
LATEST_FILE = "latest"
UNKNOWN_STEP_DIR = "step_unknown"
_STEP_DIR = re.compile(r"step_(\d+)")


class ResultsWriteError(OSError):
  """Results could not be written (disk full, ...): one line naming the folder, the
  cause and the free space there."""


@contextlib.contextmanager
def reporting_write_errors(folder: str | os.PathLike) -> Iterator[None]:
  """Turns an OSError raised inside the block into one `ResultsWriteError` line."""
  try:
    yield
  except ResultsWriteError:
    raise
  except OSError as e:
    cause = " ".join(f"{type(e).__name__}: {e.strerror or e}".split())
    raise ResultsWriteError(
      f"writing the evaluation results to {os.fspath(folder)} failed: {cause}; "
      f"{free_space(folder)} there"
    ) from e


def step_dir_name(step: int | None) -> str:
  """'step_<N>' ('step_unknown' for None)."""
  return UNKNOWN_STEP_DIR if step is None else f"step_{int(step)}"


def step_dir(outdir: str | os.PathLike, step: int | None) -> epath.Path:
  """`OUTDIR/eval/step_<N>` (not created)."""
  return epath.Path(outdir) / EVAL_SUBDIR / step_dir_name(step)


def check_writable(outdir: str | os.PathLike, step: int | None, flag: str) -> None:
  """Checks, creating nothing, that `step`'s results can be written under `outdir`.

  Args:
    outdir: the output dir (`OUTDIR/eval/...` is written).
    step: the step to be evaluated (None: `step_unknown`).
    flag: how the user gave `outdir` (e.g. '--workdir'), for the message.

  Raises:
    errors.UserError: `outdir` or `OUTDIR/eval` cannot be created or written,
      `OUTDIR/eval/step_<N>` is not a folder, or `OUTDIR/eval/latest` is a folder.
  """
  cli.check_output_dir(outdir, flag)
  root = epath.Path(outdir) / EVAL_SUBDIR
  if root.exists():
    cli.check_output_dir(os.fspath(root), flag)
  folder = step_dir(outdir, step)
  if folder.exists() and not folder.is_dir():
    raise errors.UserError(
      f"{folder} is a file: the results of step {step} go into a folder of that name",
      hint="move that file away",
    )
  latest = root / LATEST_FILE
  if latest.is_dir():
    raise errors.UserError(
      f"{latest} is a folder: it must be the one-line file naming the newest results folder",
      hint="move that folder away",
    )


def latest_step(outdir: str | os.PathLike) -> int | None:
  """The step `OUTDIR/eval/latest` names, or None (no pointer, or unreadable)."""
  path = epath.Path(outdir) / EVAL_SUBDIR / LATEST_FILE
  if not path.exists():
    return None
  match = _STEP_DIR.fullmatch(path.read_text().strip())
  return int(match.group(1)) if match else None


def latest_dir(outdir: str | os.PathLike) -> epath.Path | None:
  """The results folder `OUTDIR/eval/latest` points at, or None."""
  step = latest_step(outdir)
  return None if step is None else step_dir(outdir, step)


def update_latest(outdir: str | os.PathLike, step: int | None) -> bool:
  """Points `OUTDIR/eval/latest` at `step` unless it already names a higher step.

  Written to a temporary file and renamed (whole or unchanged).

  Returns:
    True if the pointer now names `step`.
  """
  if step is None:
    return False
  current = latest_step(outdir)
  if current is not None and current > int(step):
    return False
  write_whole(epath.Path(outdir) / EVAL_SUBDIR / LATEST_FILE, step_dir_name(step) + "\n")
  return True
