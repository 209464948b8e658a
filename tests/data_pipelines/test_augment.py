"""Tests of the decode / augmentation transforms (data_pipelines/augment.py)."""

import numpy as np
import pytest

from configs.base import get_base_config
from data_pipelines import augment
from tests.reference.fake_reid_source import encode_image


def _noise(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bilinear_half_pixel(image, out_h, out_w):
  """Reference bilinear upsampling, half-pixel centres, edge clamp (float)."""

  def axis_weights(n_in, n_out):
    x = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.clip(x, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, x - lo

  y0, y1, wy = axis_weights(image.shape[0], out_h)
  x0, x1, wx = axis_weights(image.shape[1], out_w)
  img = image.astype(np.float64)
  top = img[y0][:, x0] * (1 - wx)[None, :, None] + img[y0][:, x1] * wx[None, :, None]
  bottom = img[y1][:, x0] * (1 - wx)[None, :, None] + img[y1][:, x1] * wx[None, :, None]
  return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def test_decode_png_exact_and_resize_is_bilinear():
  image = _noise(16, 8)
  decoded = augment.decode_image(encode_image(image, "PNG"), (16, 8))
  assert decoded.dtype == np.uint8
  np.testing.assert_array_equal(decoded, image)
  up = augment.decode_image(encode_image(image, "PNG"), (32, 16))  # 2x upsampling
  assert up.shape == (32, 16, 3)
  np.testing.assert_allclose(up, _bilinear_half_pixel(image, 32, 16), atol=1.0)


def test_decode_jpeg_grayscale_and_arrays():
  gray = np.full((20, 10), 77, np.uint8)
  out = augment.decode_image(encode_image(gray, "JPEG"), (20, 10))
  assert out.shape == (20, 10, 3)
  assert np.abs(out.astype(int) - 77).max() <= 2
  arr = _noise(16, 8)
  assert augment.decode_image(arr, (16, 8)) is arr
  assert augment.decode_image(arr, (32, 16)).shape == (32, 16, 3)


def test_decode_error_names_the_file():
  with pytest.raises(ValueError, match="0001_c1_000001.jpg"):
    augment.DecodeImage((16, 8)).map({"image": b"not an image", "file_name": "0001_c1_000001.jpg"})


def test_flip_mirrors_and_keeps_other_entries():
  image = _noise(16, 8)
  element = {"image": image, "label": 3}
  out = augment.RandomFlip(1.0).random_map(element, np.random.default_rng(0))
  np.testing.assert_array_equal(out["image"], np.fliplr(image))
  assert out["label"] == 3
  assert element["image"] is image  # input untouched
  same = augment.RandomFlip(0.0).random_map(element, np.random.default_rng(0))
  np.testing.assert_array_equal(same["image"], image)
  flips = [
    np.array_equal(
      augment.RandomFlip(0.5).random_map(element, np.random.default_rng(s))["image"],
      np.fliplr(image),
    )
    for s in range(1000)
  ]
  assert 0.45 < np.mean(flips) < 0.55


def test_pad_crop_keeps_size_and_is_a_window_of_the_padded_image():
  pad = 3
  image = _noise(12, 6) | 1  # no zero pixels: padding is recognisable
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  windows = {
    (t, x): padded[t : t + 12, x : x + 6] for t in range(2 * pad + 1) for x in range(2 * pad + 1)
  }
  transform = augment.RandomPadCrop(pad)
  offsets = []
  for s in range(600):
    out = transform.random_map({"image": image}, np.random.default_rng(s))["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    match = [o for o, w in windows.items() if np.array_equal(w, out)]
    assert len(match) == 1
    offsets.append(match[0])
  offsets = np.array(offsets)
  # Every offset 0..2*pad occurs on both axes, roughly uniformly.
  for axis in range(2):
    counts = np.bincount(offsets[:, axis], minlength=2 * pad + 1)
    assert len(counts) == 2 * pad + 1 and counts.min() > 600 / 7 * 0.5


def _erased_rectangle(out, background, fill):
  """(top, left, h, w) of the changed region, checking it is one filled rectangle."""
  changed = (out != background).any(-1)
  if not changed.any():
    return None
  rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
  top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
  assert changed[top : top + h, left : left + w].all()  # a full rectangle
  assert (out[top : top + h, left : left + w] == np.array(fill, np.uint8)).all()
  return top, left, h, w


def test_erasing_probability_area_and_aspect_within_bounds():
  height, width = 256, 128
  background = np.full((height, width, 3), 7, np.uint8)
  transform = augment.RandomErasing(0.5, (0.02, 0.4), (0.3, 3.3))
  rng = np.random.default_rng(1234)
  rects = []
  for _ in range(2000):
    rect = _erased_rectangle(
      transform.random_map({"image": background}, rng)["image"], background, transform.fill
    )
    if rect is not None:
      rects.append(rect)
  rects = np.array(rects)
  assert 0.46 < len(rects) / 2000 < 0.54
  top, left, h, w = rects.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + h <= height).all() and (left + w <= width).all()
  # h, w are rounded from sqrt(area * aspect), sqrt(area / aspect): allow half a pixel.
  area = height * width
  assert ((h - 0.5) * (w - 0.5) <= 0.4 * area).all()
  assert ((h + 0.5) * (w + 0.5) >= 0.02 * area).all()
  assert ((h - 0.5) / (w + 0.5) <= 3.3).all() and ((h + 0.5) / (w - 0.5) >= 0.3).all()
  # The draws span the ranges.
  frac, aspect = h * w / area, h / w
  assert frac.min() < 0.03 and frac.max() > 0.35
  assert aspect.min() < 0.4 and aspect.max() > 2.8
  # Placement is uniform: the rectangle centre spans the image.
  assert (top + h / 2).min() < 0.2 * height and (top + h / 2).max() > 0.8 * height


def test_erasing_fill_is_the_imagenet_mean_pixel():
  from fsaf_jax.models.preprocessing import IMAGENET_MEAN

  np.testing.assert_allclose(augment.IMAGENET_MEAN_PIXEL, np.array(IMAGENET_MEAN) * 255, atol=0.5)


def test_invalid_erasing_bounds():
  with pytest.raises(ValueError, match="area"):
    augment.RandomErasing(area=(0.5, 0.2))
  with pytest.raises(ValueError, match="aspect"):
    augment.RandomErasing(aspect=(0.0, 3.3))


def _apply(transforms, element, rng):
  for t in transforms:
    element = t.random_map(element, rng) if hasattr(t, "random_map") else t.map(element)
  return element


def test_train_transforms_from_config_are_deterministic_per_seed():
  config = get_base_config().input
  config.image_size = (64, 32)
  transforms = augment.train_transforms(config)
  flip, crop, erase = transforms[1:]
  assert transforms[0].image_size == (64, 32)
  assert (flip.prob, crop.pad) == (0.5, 10)
  assert (erase.prob, erase.area, erase.aspect) == (0.5, (0.02, 0.4), (0.3, 3.3))
  record = {"image": encode_image(_noise(128, 64)), "person_id": 1}

  def run(seed):
    return _apply(transforms, record, np.random.default_rng(seed))["image"]

  outs = [run(s) for s in range(8)]
  assert all(o.shape == (64, 32, 3) and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(run(3), outs[3])
  assert len({o.tobytes() for o in outs}) == 8
