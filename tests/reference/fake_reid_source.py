"""In-memory ReID sources for input-pipeline tests: tiny PIL-encoded random images.

A source is a plain list of records `{'image': encoded bytes, 'person_id', 'camera_id',
'file_name'}`, the format `data_pipelines.datasets.source.load_source` returns (random
access by index, picklable for grain worker processes).
"""

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image


def encode_image(array: np.ndarray, fmt: str = "JPEG") -> bytes:
  """Encodes a uint8 [H, W, 3] (or [H, W]) array as JPEG / PNG bytes."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt)
  return buffer.getvalue()


def make_source(
  images_per_identity: Sequence[int],
  *,
  image_hw: tuple[int, int] = (16, 8),
  seed: int = 0,
  fmt: str = "JPEG",
  num_cameras: int = 3,
) -> list[dict]:
  """A source with identity `i` having `images_per_identity[i]` images.

  Records are interleaved across identities (not grouped), each image random noise so
  that every record decodes to a different image.

  Returns:
    list of records; `person_id` 0..len(images_per_identity)-1 (train-style labels).
  """
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.full(n, i) for i, n in enumerate(images_per_identity)])
  labels = labels[rng.permutation(len(labels))]
  records = []
  for i, label in enumerate(labels):
    pixels = rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8)
    camera = int(rng.integers(0, num_cameras))
    records.append(
      {
        "image": encode_image(pixels, fmt),
        "person_id": int(label),
        "camera_id": camera,
        "file_name": f"{label:04d}_c{camera + 1}_{i:06d}.jpg",
      }
    )
  return records
