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

import os
import re

from etils import epath

EVAL_SUBDIR = "eval"
LATEST_FILE = "latest"
UNKNOWN_STEP_DIR = "step_unknown"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir_name(step: int | None) -> str:
  """'step_<N>' ('step_unknown' for None)."""
  return UNKNOWN_STEP_DIR if step is None else f"step_{int(step)}"


def step_dir(outdir: str | os.PathLike, step: int | None) -> epath.Path:
  """`OUTDIR/eval/step_<N>` (not created)."""
  return epath.Path(outdir) / EVAL_SUBDIR / step_dir_name(step)


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
  root = epath.Path(outdir) / EVAL_SUBDIR
  root.mkdir(parents=True, exist_ok=True)
  tmp = root / f".{LATEST_FILE}.tmp{os.getpid()}"
  tmp.write_text(step_dir_name(step) + "\n")
  tmp.replace(root / LATEST_FILE)
  return True
