"""What a training run shows and records: a progress bar, console lines, TensorBoard.

`MetricLogger` writes scalars to TensorBoard event files (tensorboardX, `WORKDIR/tb`)
and one line to stdout; `console_line` prints without breaking the progress bar;
`progress_bar` is the step bar on stderr. Only process 0 writes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import tqdm
from etils import epath
from tensorboardX import SummaryWriter


class MetricLogger:
  """Scalars to TensorBoard event files (tensorboardX) and one line to stdout.

  Does nothing on processes other than 0.
  """

  def __init__(self, logdir: epath.Path, enabled: bool):
    self._writer = None
    if enabled:
      self._writer = SummaryWriter(logdir=os.fspath(logdir))

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(f"{prefix}/{name}", value, step)
    self._writer.flush()
    text = " ".join(f"{k}={v:.5g}" for k, v in scalars.items())
    console_line(f"[{prefix} step {step}] {text}")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def console_line(line: str) -> None:
  """Prints `line` to stdout without breaking the progress bar."""
  tqdm.tqdm.write(line, file=sys.stdout)
  sys.stdout.flush()


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm.tqdm:
  """The step bar (stderr) from `initial` to `total`; a no-op bar unless `enabled`."""
  return tqdm.tqdm(
    total=total,
    initial=initial,
    disable=not enabled,
    unit="step",
    dynamic_ncols=True,
    desc="train",
    file=sys.stderr,
    mininterval=1.0,
  )
