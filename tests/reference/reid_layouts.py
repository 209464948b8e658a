"""Tiny on-disk ReID datasets in the layouts as distributed, for builder tests.

`write_images(root, relpaths)` writes one small, distinct, real JPEG or PNG per path
(format from the extension) and returns {relpath: bytes written}, so tests can check
that records carry the shipped bytes unchanged. `zip_folder` packs a folder the way
the release archives are packed (top folder inside the zip).
"""

from __future__ import annotations

import io
import pathlib
import zipfile
from collections.abc import Iterable

import numpy as np
from PIL import Image

# A Market-1501 folder in miniature: its top folder and six images in its three splits
# (two training identities, one test identity seen by three cameras).
MARKET_TOP = "Market-1501-v15.09.15"
MARKET_FILES = (
  "bounding_box_train/0002_c1s1_000451_03.jpg",
  "bounding_box_train/0002_c2s1_000551_01.jpg",
  "bounding_box_train/0007_c3s3_012345_02.jpg",
  "query/0003_c1s1_000200_00.jpg",
  "bounding_box_test/0003_c2s1_000300_01.jpg",
  "bounding_box_test/0003_c3s1_000310_01.jpg",
)


def encode_image(seed: int, fmt: str, size: tuple[int, int] = (16, 8)) -> bytes:
  """A random RGB image of `size` (H, W) encoded as 'JPEG' or 'PNG'."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format=fmt)
  return buf.getvalue()


def write_images(root: pathlib.Path, relpaths: Iterable[str], seed: int = 0) -> dict[str, bytes]:
  """Writes a distinct tiny image at each `root/relpath`; returns {relpath: bytes}."""
  written = {}
  for i, relpath in enumerate(relpaths):
    fmt = "PNG" if relpath.lower().endswith(".png") else "JPEG"
    data = encode_image(seed * 100_003 + i, fmt)
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    written[relpath] = data
  return written


def write_text(root: pathlib.Path, relpath: str, lines: Iterable[str]) -> None:
  """Writes a text file (e.g. an MSMT17 list file) with `lines`."""
  path = root / relpath
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(f"{line}\n" for line in lines))


def truncate(path: pathlib.Path, keep_fraction: float = 0.5) -> None:
  """Truncates a file in place, as an interrupted download/extraction would."""
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep_fraction)])


def zip_folder(folder: pathlib.Path, zip_path: pathlib.Path) -> pathlib.Path:
  """Zips `folder` with its name as the top-level member folder (like the releases)."""
  with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
    for path in sorted(folder.rglob("*")):
      arcname = path.relative_to(folder.parent).as_posix()
      zf.write(path, arcname + ("/" if path.is_dir() else ""))
  return zip_path
