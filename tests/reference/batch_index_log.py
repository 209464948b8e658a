"""The batch-sequence audit of the resume tests: each step's source record indices.

`BatchIndexLog(workdir)` is a `train_loop.train_and_evaluate` `on_step` hook: it appends
one JSON line per step, `{"step": s, "index": [...]}`, to
`WORKDIR/batch_indices/process_<i>.jsonl`, with `s` the state's step after training on
the batch and `index` this process's rows of its source record indices. Lines for steps
after the last checkpoint are written again when a killed run resumes: the last line of
a step is the batch that counted (`read_batch_index_log`). `train_with_batch_log.py`
installs it in `train.py` for the subprocess tests.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np

INDICES_SUBDIR = "batch_indices"


def log_path(workdir: str | os.PathLike, process: int) -> pathlib.Path:
  """`WORKDIR/batch_indices/process_<process>.jsonl`."""
  return pathlib.Path(workdir) / INDICES_SUBDIR / f"process_{process}.jsonl"


class BatchIndexLog:
  """`on_step(step, batch)` hook appending `batch['index']` (this process's rows)."""

  def __init__(self, workdir: str | os.PathLike):
    self._workdir = pathlib.Path(os.path.abspath(os.fspath(workdir)))

  def __call__(self, step: int, batch: dict[str, jax.Array]) -> None:
    index = batch["index"]
    shards = sorted(index.addressable_shards, key=lambda s: s.index[0].start or 0)
    rows = np.concatenate([np.asarray(s.data) for s in shards]).tolist()
    path = log_path(self._workdir, jax.process_index())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:  # one whole line per step, closed at once (SIGKILL-safe)
      f.write(json.dumps({"step": step, "index": rows}) + "\n")


def read_batch_index_log(workdir: str | os.PathLike, process: int = 0) -> dict[int, list[int]]:
  """{step: record indices} of `BatchIndexLog`, the last line of each step winning."""
  steps = {}
  for line in log_path(workdir, process).read_text().splitlines():
    if line.strip():
      record = json.loads(line)
      steps[int(record["step"])] = record["index"]
  return steps
