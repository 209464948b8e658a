"""Checks that encoded image bytes decode completely (catches corrupt/truncated files).

Builders store the bytes as shipped (no re-encoding); this check decodes each image
once with PIL, in JPEG draft mode (DCT-domain downscaling: still reads every byte of
the entropy-coded data, so truncation is caught, at a fraction of the cost).
"""

import contextlib
import io

from PIL import Image, ImageFile

from fsaf_jax.core import errors

_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}


class CorruptImageError(errors.UserError):
  """An image file that does not decode (truncated, corrupt or of the wrong format)."""


@contextlib.contextmanager
def strict_pil():
  """Within: PIL raises on truncated images even if someone enabled tolerance globally."""
  previous = ImageFile.LOAD_TRUNCATED_IMAGES
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    yield
  finally:
    ImageFile.LOAD_TRUNCATED_IMAGES = previous


def check_encoded_image(data: bytes, encoding_format: str) -> None:
  """Decodes `data` fully; raises CorruptImageError saying why if it cannot.

  Args:
    data: the encoded file content.
    encoding_format: 'jpeg' or 'png', the format the file must be in.

  Raises:
    CorruptImageError: empty, undecodable, truncated, or not `encoding_format`.
  """
  expected = _PIL_FORMATS[encoding_format]
  if not data:
    raise CorruptImageError("empty file")
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != expected:
        raise CorruptImageError(f"is {image.format}, expected {expected}")
      if expected == "JPEG":
        image.draft("RGB", (1, 1))
      image.load()
  except CorruptImageError:
    raise
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
    raise CorruptImageError(f"{type(e).__name__}: {e}") from e
