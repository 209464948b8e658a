"""A feature extractor written by `export.export_extractor`, loaded with JAX alone.

  embed = load_exported("fsaf.jaxexport")
  feats = embed(images_uint8)  # uint8 [n, H, W, 3] -> float32 [n, C], any n

Needs neither flax nor the model code (this module imports only JAX and NumPy), so an
exported extractor runs wherever JAX does.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from etils import epath


class ExportedExtractor:
  """A deserialised extractor: `embed(images uint8 [n, H, W, 3]) -> float32 [n, C]`.

  Attributes:
    exported: the `jax.export.Exported`.
    image_size: (H, W) it accepts.
    embedding_dim: C.
  """

  def __init__(self, exported: jax.export.Exported, source: str = "<memory>"):
    (in_aval,) = exported.in_avals
    (out_aval,) = exported.out_avals
    self.exported = exported
    self.source = source
    self.image_size = (int(in_aval.shape[1]), int(in_aval.shape[2]))
    self.embedding_dim = int(out_aval.shape[1])
    self._call = jax.jit(exported.call)

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    h, w = self.image_size
    if images.ndim != 4 or images.shape[1:] != (h, w, 3) or images.dtype != np.uint8:
      raise ValueError(
        f"{self.source} expects uint8 images [n, {h}, {w}, 3], got {images.dtype} {images.shape}"
      )
    return np.asarray(self._call(images))


def load_exported(path: str | os.PathLike) -> ExportedExtractor:
  """Reads a file written by `export_extractor`; returns the callable extractor."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"no exported extractor at {path}")
  try:
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
  except Exception as e:  # flatbuffers raise assorted errors on foreign bytes.
    raise ValueError(f"{path} is not a serialised jax.export module: {e}") from e
  if len(exported.in_avals) != 1 or len(exported.out_avals) != 1:
    raise ValueError(
      f"{path} is not a feature extractor export: takes {len(exported.in_avals)} "
      f"inputs and returns {len(exported.out_avals)} outputs (expected 1 and 1)"
    )
  return ExportedExtractor(exported, str(path))
