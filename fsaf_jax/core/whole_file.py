"""Files written whole or not at all.

`write_whole` writes through a temporary file in the same folder, renamed over the
target: a reader sees the old content or the new one, never a part, and a failed write
(e.g. a full disk) leaves the old file as it was.
"""

from __future__ import annotations

import os

from etils import epath


def write_whole(path: str | os.PathLike, data: bytes | str) -> epath.Path:
  """Writes `data` (str: UTF-8) to `path`, creating its parents, through a temporary
  file renamed over it; the temporary file is removed if the write fails.

  Returns:
    `path` as an `epath.Path`.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  try:
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()
  return path
