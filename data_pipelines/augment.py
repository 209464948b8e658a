"""Per-record image transforms of the input pipelines, as grain transforms.

Elements are dicts with an `'image'` entry; every transform returns a new dict with the
image replaced and the other entries untouched. Images stay uint8 RGB [H, W, 3]:
normalisation happens on the device (`fsaf_jax.models.preprocessing.normalize_images`).

The random transforms are `grain.transforms.RandomMap`s: they draw only from the `rng`
they are given, which the pipeline seeds from `(seed, record position)`, so an augmented
batch is a pure function of the seed and its position. They follow torchvision /
fast-reid: `RandomHorizontalFlip(0.5)`, `Pad(10)` + `RandomCrop(size)`, and
`RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3))` filled with the ImageNet mean
pixel (fast-reid's `value=[0.485*255, 0.456*255, 0.406*255]`), which is 0 after
normalisation.
"""

import dataclasses
import io
import math
from collections.abc import Sequence

import grain
import ml_collections
import numpy as np
from PIL import Image

# ImageNet mean in uint8 pixel units (fsaf_jax.models.preprocessing.IMAGENET_MEAN * 255).
IMAGENET_MEAN_PIXEL = (124, 116, 104)
# Integer grayscale modes PIL gives 16-bit PNG / TIFF images (PIL's own conversion to
# RGB clips them at 255: an all-white image); scaled from the 16-bit range instead.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes with transparency: composited onto this background.
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
ALPHA_BACKGROUND = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
  """`image` converted to mode RGB, from whatever mode PIL decoded it in.

  - 'RGB': unchanged; '1', 'L', 'P', 'CMYK', 'YCbCr', 'HSV': PIL's conversion.
  - 'RGBA', 'LA', 'PA' and palette images with a transparent colour: composited onto
    white (`ALPHA_BACKGROUND`), as image viewers show them.
  - 16-bit grayscale ('I;16', 'I;16B', ..., and 'I', which PIL uses for 16-bit PNGs):
    value / 257 rounded, so 0..65535 maps onto 0..255 (values outside are clipped).

  Raises:
    ValueError: naming the mode, for modes without a defined 8-bit RGB meaning ('F':
      float pixels) or that PIL cannot convert (e.g. 'LAB').
  """
  mode = image.mode
  if mode == "RGB":
    return image
  if mode in SIXTEEN_BIT_MODES:
    values = np.asarray(image).astype(np.float64)
    gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")
  if mode in ALPHA_MODES or (mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  if mode == "F":
    raise ValueError(
      "image mode 'F' (32-bit float pixels) has no defined 8-bit range; save it as an "
      "8-bit or 16-bit image"
    )
  try:
    return image.convert("RGB")
  except ValueError as e:
    raise ValueError(f"image mode {mode!r} cannot be converted to RGB ({e})") from e


def decode_image(data: bytes | np.ndarray, image_size: Sequence[int]) -> np.ndarray:
  """Decodes an encoded image and resizes it.

  Args:
    data: encoded JPEG / PNG bytes (any mode PIL reads: converted by `to_rgb`), or an
      already decoded uint8 array [h, w, 3].
    image_size: output (H, W).

  Returns:
    uint8 array [H, W, 3]: the image resized bilinearly (PIL, as torchvision's `Resize`
    on PIL images) unless it already has that size.

  Raises:
    ValueError: the image's mode has no RGB conversion (see `to_rgb`); PIL's errors
      (OSError, ...) for bytes that do not decode.
  """
  height, width = image_size
  if isinstance(data, np.ndarray):
    if data.dtype != np.uint8 or data.ndim != 3 or data.shape[-1] != 3:
      raise ValueError(f"decoded images must be uint8 [h, w, 3], got {data.dtype} {data.shape}")
    if data.shape[:2] == (height, width):
      return data
    image = Image.fromarray(data)
  else:
    image = to_rgb(Image.open(io.BytesIO(data)))
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  return np.asarray(image, dtype=np.uint8)


def _with_image(element: dict, image: np.ndarray) -> dict:
  element = dict(element)
  element["image"] = image
  return element


@dataclasses.dataclass(frozen=True)
class DecodeImage(grain.transforms.Map):
  """Decodes `element['image']` (encoded bytes) to uint8 [H, W, 3] at `image_size`."""

  image_size: tuple[int, int]

  def map(self, element: dict) -> dict:
    try:
      image = decode_image(element["image"], self.image_size)
    except (OSError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
      name = element.get("file_name", "<unknown file_name>")
      if isinstance(name, bytes):
        name = name.decode()
      raise ValueError(f"cannot decode the image of record {name!r}: {e}") from e
    return _with_image(element, image)


@dataclasses.dataclass(frozen=True)
class RandomFlip(grain.transforms.RandomMap):
  """Mirrors the image left-right with probability `prob`."""

  prob: float = 0.5

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if rng.random() < self.prob:
      return _with_image(element, np.ascontiguousarray(element["image"][:, ::-1]))
    return element


@dataclasses.dataclass(frozen=True)
class RandomPadCrop(grain.transforms.RandomMap):
  """Pads by `pad` pixels of `fill` on every side, then crops a random [H, W] window.

  Same as torchvision `Pad(pad, fill)` then `RandomCrop((H, W))`: the window's top-left
  corner is uniform over the (2 * pad + 1)^2 positions.
  """

  pad: int = 10
  fill: int = 0

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if self.pad == 0:
      return element
    image = element["image"]
    height, width = image.shape[:2]
    top, left = rng.integers(0, 2 * self.pad + 1, size=2)
    # The window [top, top + H) x [left, left + W) of the padded image, without padding:
    # output pixel (y, x) is input pixel (y + top - pad, x + left - pad) where that exists.
    dy, dx = int(top) - self.pad, int(left) - self.pad
    out = np.full_like(image, self.fill)
    out[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = image[
      max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)
    ]
    return _with_image(element, out)


@dataclasses.dataclass(frozen=True)
class RandomErasing(grain.transforms.RandomMap):
  """Fills a random rectangle with a constant, with probability `prob` (Zhong et al.).

  As torchvision's `RandomErasing`: up to `max_attempts` draws of an area fraction
  uniform in `area` and an aspect ratio (height / width) log-uniform in `aspect`; the
  first rectangle that fits strictly inside the image is placed uniformly and filled.
  If none fits, the image is returned unchanged.
  """

  prob: float = 0.5
  area: tuple[float, float] = (0.02, 0.4)
  aspect: tuple[float, float] = (0.3, 3.3)
  fill: tuple[int, int, int] = IMAGENET_MEAN_PIXEL
  max_attempts: int = 10

  def __post_init__(self):
    lo, hi = self.area
    if not 0 < lo <= hi <= 1:
      raise ValueError(f"erasing area must satisfy 0 < lo <= hi <= 1, got {self.area}")
    lo, hi = self.aspect
    if not 0 < lo <= hi:
      raise ValueError(f"erasing aspect must satisfy 0 < lo <= hi, got {self.aspect}")

  def rectangle(
    self, height: int, width: int, rng: np.random.Generator
  ) -> tuple[int, int, int, int] | None:
    """Draws the erased rectangle (top, left, h, w), or None if nothing is erased."""
    if rng.random() >= self.prob:
      return None
    log_aspect = (math.log(self.aspect[0]), math.log(self.aspect[1]))
    for _ in range(self.max_attempts):
      target = height * width * rng.uniform(*self.area)
      aspect = math.exp(rng.uniform(*log_aspect))
      h = int(round(math.sqrt(target * aspect)))
      w = int(round(math.sqrt(target / aspect)))
      if 0 < h < height and 0 < w < width:
        top = int(rng.integers(0, height - h + 1))
        left = int(rng.integers(0, width - w + 1))
        return top, left, h, w
    return None

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    image = element["image"]
    rect = self.rectangle(image.shape[0], image.shape[1], rng)
    if rect is None:
      return element
    top, left, h, w = rect
    out = image.copy()
    out[top : top + h, left : left + w] = np.asarray(self.fill, image.dtype)
    return _with_image(element, out)


def train_transforms(input_config: ml_collections.ConfigDict) -> list[grain.transforms.Map]:
  """Decode + augmentations of training records, from `config.input`.

  Returns:
    [DecodeImage, RandomFlip, RandomPadCrop, RandomErasing]: apply in order; the random
    ones with the record's rng.
  """
  return [
    DecodeImage(tuple(input_config.image_size)),
    RandomFlip(input_config.flip_prob),
    RandomPadCrop(input_config.pad),
    RandomErasing(
      input_config.erasing_prob,
      tuple(input_config.erasing_area),
      tuple(input_config.erasing_aspect),
    ),
  ]
