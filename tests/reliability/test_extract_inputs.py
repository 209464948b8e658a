"""Misused `fsaf_jax.extract` inputs: no weights, bad output paths, images of every PIL
mode, corrupt images (fail naming the file, or `skip_corrupt`), one name rule with the
dataset builders."""

import io
import logging
import pathlib

import numpy as np
import PIL.Image
import pytest

from configs import tiny
from data_pipelines import augment
from data_pipelines.datasets import image_check, naming
from fsaf_jax import extract
from fsaf_jax.core import errors


def _snapshot(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _encode(image: PIL.Image.Image, fmt: str) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


# --- Image modes. -----------------------------------------------------------------------


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white():
  values = np.array([[0, 257, 1000, 30000], [65535, 128, 40000, 65000]], np.uint16)
  data = _encode(PIL.Image.fromarray(values), "PNG")
  assert PIL.Image.open(io.BytesIO(data)).mode in augment.SIXTEEN_BIT_MODES
  decoded = augment.decode_image(data, values.shape)
  expected = np.floor(values / 257.0 + 0.5).astype(np.uint8)  # 1000 -> 4, 30000 -> 117
  assert decoded.shape == (2, 4, 3)
  for c in range(3):
    np.testing.assert_array_equal(decoded[..., c], expected)
  # 'I' (32-bit integer) follows the same rule.
  as_i = augment.to_rgb(PIL.Image.fromarray(values.astype(np.int32)))
  np.testing.assert_array_equal(np.asarray(as_i)[..., 0], expected)


def test_alpha_is_composited_onto_white():
  rgba = np.array([[[200, 100, 0, 64], [10, 20, 30, 255], [90, 90, 90, 0]]], np.uint8)
  out = np.asarray(augment.to_rgb(PIL.Image.fromarray(rgba, "RGBA"))).astype(float)
  a = rgba[..., 3:].astype(float) / 255
  expected = rgba[..., :3] * a + 255 * (1 - a)  # (241.2, 191.0, 191.0), (10, 20, 30), white
  np.testing.assert_allclose(out, expected, atol=1)
  la = np.array([[[100, 255], [100, 0]]], np.uint8)
  out = np.asarray(augment.to_rgb(PIL.Image.fromarray(la, "LA")))
  np.testing.assert_array_equal(out, [[[100] * 3, [255] * 3]])


def test_palette_one_bit_gray_and_cmyk():
  pal = PIL.Image.new("P", (3, 1))
  pal.putpalette([10, 20, 30, 200, 150, 100] + [0, 0, 0] * 254)
  pal.putdata([0, 1, 0])
  np.testing.assert_array_equal(
    np.asarray(augment.to_rgb(pal)), [[[10, 20, 30], [200, 150, 100], [10, 20, 30]]]
  )
  pal.info["transparency"] = 1  # palette entry 1 is transparent
  decoded = augment.decode_image(_encode(pal, "PNG"), (1, 3))
  np.testing.assert_array_equal(decoded, [[[10, 20, 30], [255, 255, 255], [10, 20, 30]]])
  one = PIL.Image.fromarray(np.array([[True, False]]))
  assert one.mode == "1"
  np.testing.assert_array_equal(np.asarray(augment.to_rgb(one)), [[[255] * 3, [0] * 3]])
  gray = PIL.Image.fromarray(np.array([[7, 250]], np.uint8))
  np.testing.assert_array_equal(np.asarray(augment.to_rgb(gray)), [[[7] * 3, [250] * 3]])
  cmyk = PIL.Image.new("CMYK", (1, 1), (55, 0, 255, 0))  # no black: RGB = 255 - CMY
  np.testing.assert_array_equal(np.asarray(augment.to_rgb(cmyk)), [[[200, 255, 0]]])


def test_float_images_are_refused_naming_the_mode():
  data = _encode(PIL.Image.fromarray(np.ones((4, 2), np.float32)), "TIFF")
  with pytest.raises(ValueError, match="mode 'F'"):
    augment.decode_image(data, (4, 2))


# --- Weights and output paths, before any work. ------------------------------------------


@pytest.fixture
def folder(tmp_path):
  """Good images of several modes (one with an upper-case extension) and litter."""
  root = tmp_path / "images"
  root.mkdir()
  rng = np.random.default_rng(0)
  rgb = lambda: rng.integers(0, 256, (24, 12, 3), dtype=np.uint8)  # noqa: E731
  PIL.Image.fromarray(rgb()).save(root / "0002_c1s1_000451_03.jpg")
  PIL.Image.fromarray(rgb()).save(root / "0007_c3s2_004521_01.JPG", format="JPEG")
  PIL.Image.fromarray(rng.integers(0, 65535, (24, 12)).astype(np.uint16)).save(
    root / "0003_c1_1.png"
  )
  PIL.Image.fromarray(np.dstack([rgb(), rng.integers(0, 256, (24, 12, 1), np.uint8)])).save(
    root / "rgba.png"
  )
  (root / "._0002_c1s1_000451_03.jpg").write_bytes(b"AppleDouble litter")
  (root / "notes.txt").write_text("not an image")
  return root


def test_no_weights_is_refused_before_any_work(folder, tmp_path):
  out = tmp_path / "out" / "f.npz"
  with pytest.raises(extract.NoWeightsError, match="--workdir.*--config.init.pretrained") as e:
    extract.extract_folder(tiny.get_config(), images=str(folder), out=str(out))
  assert "--random_weights" in e.value.hint
  assert not (tmp_path / "out").exists()


def test_contradictory_or_missing_weights(folder, tmp_path):
  config = tiny.get_config()
  with pytest.raises(extract.NoWeightsError, match="--random_weights contradicts --workdir"):
    extract.extract_folder(
      config, images=str(folder), out=str(tmp_path / "f.npz"), workdir="/w", random_weights=True
    )
  config.init.pretrained = str(tmp_path / "missing.msgpack")
  with pytest.raises(errors.UserError, match="missing.msgpack: no such file"):
    extract.extract_folder(config, images=str(folder), out=str(tmp_path / "f.npz"))
  with pytest.raises(errors.InputNotFoundError, match=r"--workdir=.*nowork: no checkpoint"):
    extract.extract_folder(
      tiny.get_config(),
      images=str(folder),
      out=str(tmp_path / "f.npz"),
      workdir=str(tmp_path / "nowork"),
    )
  assert not (tmp_path / "f.npz").exists()


@pytest.mark.parametrize(
  "batch_size, config_size, match",
  [
    (0, 16, "--batch_size=0: must be >= 1"),
    (-3, 16, "--batch_size=-3: must be >= 1"),
    (None, 0, "config.input.eval_batch_size=0: must be >= 1"),
  ],
)
def test_bad_batch_sizes_are_refused_before_any_work(
  folder, tmp_path, batch_size, config_size, match
):
  config = tiny.get_config()
  config.input.eval_batch_size = config_size
  with pytest.raises(errors.UserError, match=match):
    extract.extract_folder(
      config,
      images=str(folder),
      out=str(tmp_path / "f.npz"),
      random_weights=True,
      batch_size=batch_size,
    )
  assert not (tmp_path / "f.npz").exists()


def test_output_paths_are_checked_first(folder, tmp_path):
  config = tiny.get_config()
  (tmp_path / "a_file").write_text("keep me")
  before = _snapshot(tmp_path)
  kwargs = dict(images=str(folder), random_weights=True)
  with pytest.raises(errors.UserError, match=r"--out=.* is a directory"):
    extract.extract_folder(config, out=str(tmp_path), **kwargs)
  with pytest.raises(errors.UserError, match=r"--export=.*a_file is not a directory"):
    extract.extract_folder(
      config, out=str(tmp_path / "f.npz"), export=str(tmp_path / "a_file" / "x"), **kwargs
    )
  with pytest.raises(errors.UserError, match="--out and --export name the same file"):
    extract.extract_folder(
      config, out=str(tmp_path / "f.npz"), export=str(tmp_path / "f.npz"), **kwargs
    )
  with pytest.raises(extract.ImagesNotADirectoryError, match="--images=.*a_file .*is a file"):
    extract.extract_folder(
      config, images=str(tmp_path / "a_file"), out=str(tmp_path / "f.npz"), random_weights=True
    )
  assert _snapshot(tmp_path) == before


# --- Corrupt images. ----------------------------------------------------------------------


def test_corrupt_images_fail_naming_the_file_or_are_skipped_and_listed(folder, tmp_path, caplog):
  good = sorted(p.name for p in folder.iterdir() if naming.is_image_name(p.name))
  assert good == [
    "0002_c1s1_000451_03.jpg",
    "0003_c1_1.png",
    "0007_c3s2_004521_01.JPG",
    "rgba.png",
  ]
  config = tiny.get_config()
  clean = extract.extract_folder(
    config, images=str(folder), out=str(tmp_path / "clean.npz"), batch_size=4, random_weights=True
  )
  assert clean["file_names"].tolist() == good
  np.testing.assert_array_equal(clean["pids"], [2, 3, 7, -1])  # .JPG parsed as .jpg
  np.testing.assert_array_equal(clean["camids"], [0, 0, 2, -1])

  data = (folder / "0002_c1s1_000451_03.jpg").read_bytes()
  (folder / "a_truncated.jpg").write_bytes(data[: len(data) // 2])
  (folder / "b_empty.jpg").write_bytes(b"")
  PIL.Image.fromarray(np.ones((4, 2), np.float32)).save(folder / "c_float.png", format="TIFF")
  out = tmp_path / "f.npz"
  with pytest.raises(image_check.CorruptImageError, match=r"cannot decode image .*images/[abc]_"):
    extract.extract_folder(config, images=str(folder), out=str(out), random_weights=True)
  assert not out.exists()

  with caplog.at_level(logging.WARNING):
    skipped = extract.extract_folder(
      config,
      images=str(folder),
      out=str(out),
      batch_size=4,
      random_weights=True,
      skip_corrupt=True,
    )
  assert skipped["file_names"].tolist() == good
  # The same rows as without the bad files: nothing shifted by the skipped ones.
  np.testing.assert_allclose(skipped["feats"], clean["feats"], atol=1e-6)
  np.testing.assert_array_equal(skipped["pids"], clean["pids"])
  listed = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
  assert len(listed) == 1 and "Skipped 3 image(s)" in listed[0]
  for name, why in [("a_truncated.jpg", "truncated"), ("b_empty.jpg", "empty"), ("c_float", "F")]:
    assert name in listed[0] and why in listed[0]


def test_all_images_corrupt_is_one_error(tmp_path):
  root = tmp_path / "images"
  root.mkdir()
  (root / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
  with pytest.raises(image_check.CorruptImageError, match="none of the 1 images .*x.jpg"):
    extract.extract_folder(
      tiny.get_config(),
      images=str(root),
      out=str(tmp_path / "f.npz"),
      random_weights=True,
      skip_corrupt=True,
    )
  assert not (tmp_path / "f.npz").exists()


# --- One name rule. ----------------------------------------------------------------------


def test_one_name_rule_for_builders_and_extract():
  for name in ["a.jpg", "a.JPG", "a.Jpeg", "b.PNG"]:
    assert naming.is_image_name(name), name
  for name in ["._a.jpg", ".hidden.png", "Thumbs.db", "a.gif", "a.jpg.txt", "notes"]:
    assert not naming.is_image_name(name), name
  # The builders' parsers and extract read `X.JPG` as `X.jpg`.
  assert naming.parse_market_name("0007_c3s2_004521_01.JPG") == (7, 2)
  assert naming.parse_duke_name("0001_c2_f0046182.JPG") == (1, 1)
  assert naming.parse_cuhk03_np_name("0001_c1_1.PNG") == (1, 0)
  pids, camids = extract.parse_ids(["sub/0007_c3s2_004521_01.JPG", "0001_c1_1.PNG"])
  np.testing.assert_array_equal(pids, [7, 1])
  np.testing.assert_array_equal(camids, [2, 0])
  with pytest.raises(ValueError, match="IMG_0001.JPG"):
    naming.parse_market_name("IMG_0001.JPG")


def test_a_failed_write_leaves_no_partial_output(folder, tmp_path, monkeypatch):
  out = tmp_path / "f.npz"
  out.write_bytes(b"previous result")

  def savez_until_the_disk_is_full(f, **arrays):
    f.write(b"PK\x03\x04 the first bytes")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "savez", savez_until_the_disk_is_full)
  with pytest.raises(errors.UserError, match=r"cannot write --out=.*f.npz: .*No space left"):
    extract.extract_folder(
      tiny.get_config(), images=str(folder), out=str(out), batch_size=4, random_weights=True
    )
  assert out.read_bytes() == b"previous result"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "images"]
  monkeypatch.undo()  # the disk has room again: the result replaces the old file
  result = extract.extract_folder(
    tiny.get_config(), images=str(folder), out=str(out), batch_size=4, random_weights=True
  )
  np.testing.assert_array_equal(np.load(out)["feats"], result["feats"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz", "images"]
