"""A folder made read-only for the process, for tests run as root (for whom permissions
do not restrict writes): `os.access(path, W_OK)` answers False under it."""

import os
import pathlib


def deny_writes_under(monkeypatch, root: str | os.PathLike) -> None:
  """Patches `os.access` so that a write-access question about `root` or anything below
  it is answered False; other questions get the real answer."""
  real_access = os.access
  prefix = str(pathlib.Path(root))

  def access(path, mode, *args, **kwargs):
    if str(path).startswith(prefix) and mode & os.W_OK:
      return False
    return real_access(path, mode, *args, **kwargs)

  monkeypatch.setattr(os, "access", access)
