"""A release file downloaded once, checked against the SHA-256 its name carries.

  path = download_verified(url, cache / "resnet50_ibn_a-d9d0bb7b.pth")

The torch hub convention: the hex digits after the last '-' of the file name
(`resnet50_ibn_a-d9d0bb7b.pth`) are the first digits of the file's SHA-256. The file
is streamed into a temporary file in the destination folder, hashed on the way, and
renamed into place only when complete and matching: an interrupted or corrupt download
never leaves a file at the destination (nor the temporary one). Standard library only
(`urllib.request`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pathlib
import re
import urllib.error
import urllib.request

from data_pipelines import errors

_HASH_PREFIX = re.compile(r"-([0-9a-f]{8,64})\.[^-]+$")
CHUNK = 1 << 20


class DownloadError(errors.UserError):
  """A download failed (offline, HTTP error, cut off) or its SHA-256 does not match."""


def hash_prefix(file_name: str) -> str:
  """The SHA-256 prefix `file_name` carries ('resnet50-0676ba61.pth' -> '0676ba61').

  Raises:
    ValueError: the name carries none (8 to 64 lower-case hex digits after its last '-').
  """
  match = _HASH_PREFIX.search(file_name)
  if not match:
    raise ValueError(f"{file_name!r} carries no SHA-256 prefix ('NAME-<hex>.EXT')")
  return match[1]


def sha256_file(path: str | os.PathLike) -> str:
  """Hex SHA-256 of the file at `path`, read in chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def download_verified(
  url: str, dest: str | os.PathLike, *, manual: str = "", timeout: float = 60.0
) -> pathlib.Path:
  """`dest`, downloaded from `url` if absent, its SHA-256 checked against its name.

  Args:
    url: where the file is.
    dest: the local file; its name carries the hash prefix (`hash_prefix`). If it
      exists it is returned as is (it was checked when it was written).
    manual: what the user can do by hand instead, appended to an error's hint.
    timeout: seconds without data before the connection is given up.

  Returns:
    `dest` as a `pathlib.Path`.

  Raises:
    DownloadError: naming `url` and `dest`: the server cannot be reached, answers
      with an HTTP error, closes the connection early, or sends a file whose SHA-256
      does not start with the name's prefix. Nothing is left at `dest`.
  """
  dest = pathlib.Path(dest).expanduser()
  if dest.is_file():
    return dest
  expected = hash_prefix(dest.name)
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.parent / f".{dest.name}.part{os.getpid()}"
  digest, received = hashlib.sha256(), 0
  hint = f"check the connection, or download {url} by hand to {dest}" + (
    f"; {manual}" if manual else ""
  )
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
      length = response.headers.get("Content-Length")
      for chunk in iter(lambda: response.read(CHUNK), b""):
        digest.update(chunk)
        f.write(chunk)
        received += len(chunk)
    if length is not None and received != int(length):
      raise http.client.IncompleteRead(b"", int(length) - received)
    got = digest.hexdigest()
    if not got.startswith(expected):
      raise DownloadError(
        f"downloaded {url} to {dest}: its SHA-256 {got[:16]}... does not start with "
        f"{expected}, the prefix its name carries (corrupt or replaced file; not kept)",
        hint=hint,
      )
    os.replace(tmp, dest)
  except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
    reason = getattr(e, "reason", None) or e
    if isinstance(e, http.client.IncompleteRead):
      reason = f"connection closed after {received} bytes, {e.expected} missing"
    raise DownloadError(
      f"cannot download {url} to {dest} ({type(e).__name__}: {errors.one_line(str(reason))})",
      hint=hint,
    ) from e
  finally:
    tmp.unlink(missing_ok=True)
  return dest
