"""Two tiny synthetic Market-1501 sets (seeds 0 and 1) and their union built by hand.

`write(root)` writes `tiny_synthetic_run.SYNTHETIC` with two seeds into
`root/synth_a` and `root/synth_b`; `config(root)` is the tiny run's config training on
both: `config.input.datasets = ('market1501@ROOT/synth_a', 'market1501@ROOT/synth_b')`,
data_dir `root/tfds` (the second copy of `market1501` is built into
`root/tfds/market1501@synth_b`).

`hand_union(root, combineall)` is the union read straight from the file names of the
two folders (a regex over the Market-1501 names, not the code under test): set after
set, its training pids relabelled 0..N-1 in sorted order, then (combineall) its query
and gallery pids other than -1 and 0 in sorted order after them, all offset by the
classes of the sets before; cameras (0-based) offset by the cameras of the sets before
(`max camera + 1` of the images a set contributes).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import ml_collections

from data_pipelines import synthetic
from tests.reference import tiny_synthetic_run

SETS = ("synth_a", "synth_b")
_MARKET_NAME = re.compile(r"^(-1|\d{4})_c(\d)s\d_\d+_\d+\.jpg$")
NOT_IDENTITIES = (-1, 0)  # Market-1501's junk and distractor pids


def write(root: str | pathlib.Path) -> None:
  """Writes the two synthetic folders (seed 0 into `synth_a`, seed 1 into `synth_b`)."""
  for seed, name in enumerate(SETS):
    out = pathlib.Path(root) / name
    synthetic.generate(out, dataclasses.replace(tiny_synthetic_run.SYNTHETIC, seed=seed))


def config(root: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The tiny run's config on the union of the two sets."""
  root = pathlib.Path(root)
  c = tiny_synthetic_run.config(root)
  c.input.datasets = tuple(f"market1501@{root / s}" for s in SETS)
  c.input.manual_dir = ""  # the first entry names its folder
  return c


def _listing(folder: pathlib.Path) -> list[tuple[str, int, int]]:
  """(file name, pid, 0-based camera) of every image in `folder`."""
  rows = []
  for path in sorted(folder.iterdir()):
    m = _MARKET_NAME.match(path.name)
    assert m, f"not a Market-1501 name: {path}"
    rows.append((path.name, int(m.group(1)), int(m.group(2)) - 1))
  return rows


@dataclasses.dataclass
class HandUnion:
  """records: (file name, label, camera) of every union image; ids / images / cameras:
  per set, in order; num_classes: the total."""

  records: list[tuple[str, int, int]]
  ids: list[int]
  images: list[int]
  cameras: list[int]

  @property
  def num_classes(self) -> int:
    return sum(self.ids)


def hand_union(root: str | pathlib.Path, combineall: bool = False) -> HandUnion:
  """The union of the two folders, from their file names (module doc)."""
  union = HandUnion([], [], [], [])
  label_offset = camera_offset = 0
  for name in SETS:
    top = pathlib.Path(root) / name / synthetic.MARKET_DIR
    train = _listing(top / synthetic.TRAIN_DIR)
    label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in train}))}
    rows = [(f, label[pid], cam) for f, pid, cam in train]
    if combineall:
      test = _listing(top / synthetic.QUERY_DIR) + _listing(top / synthetic.GALLERY_DIR)
      test = [r for r in test if r[1] not in NOT_IDENTITIES]
      extra = {pid: len(label) + i for i, pid in enumerate(sorted({pid for _, pid, _ in test}))}
      rows += [(f, extra[pid], cam) for f, pid, cam in test]
      label |= extra
    num_cameras = max(cam for _, _, cam in rows) + 1
    union.records += [(f, label_offset + lab, camera_offset + cam) for f, lab, cam in rows]
    union.ids.append(len(label))
    union.images.append(len(rows))
    union.cameras.append(num_cameras)
    label_offset += len(label)
    camera_offset += num_cameras
  return union
