"""The corrupt-image check on real encoded bytes (PIL), truncated and mislabelled."""

import pytest
from PIL import ImageFile

from data_pipelines.datasets import image_check
from tests.reference import reid_layouts


@pytest.mark.parametrize("fmt, pil_fmt", [("jpeg", "JPEG"), ("png", "PNG")])
def test_intact_images_pass(fmt, pil_fmt):
  image_check.check_encoded_image(reid_layouts.encode_image(0, pil_fmt), fmt)


@pytest.mark.parametrize("fraction", [0.9, 0.5, 0.1, 0.0])
@pytest.mark.parametrize("fmt, pil_fmt", [("jpeg", "JPEG"), ("png", "PNG")])
def test_truncated_images_fail(fmt, pil_fmt, fraction):
  data = reid_layouts.encode_image(0, pil_fmt, size=(64, 32))
  with pytest.raises(image_check.CorruptImageError):
    image_check.check_encoded_image(data[: int(len(data) * fraction)], fmt)


def test_jpeg_missing_only_its_end_marker_fails():
  data = reid_layouts.encode_image(0, "JPEG", size=(64, 32))
  assert data.endswith(b"\xff\xd9")
  with pytest.raises(image_check.CorruptImageError, match="truncated"):
    image_check.check_encoded_image(data[:-2], "jpeg")


def test_wrong_format_fails():
  with pytest.raises(image_check.CorruptImageError, match="PNG"):
    image_check.check_encoded_image(reid_layouts.encode_image(0, "PNG"), "jpeg")


def test_strict_even_if_truncated_images_are_tolerated_globally(monkeypatch):
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  data = reid_layouts.encode_image(0, "JPEG", size=(64, 32))
  with image_check.strict_pil(), pytest.raises(image_check.CorruptImageError):
    image_check.check_encoded_image(data[: len(data) // 2], "jpeg")
  assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # restored
