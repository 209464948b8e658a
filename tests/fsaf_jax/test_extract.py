"""Tests of `python -m fsaf_jax.extract` on a folder of tiny images, tiny config."""

import os
import pathlib
import sys

import jax
import numpy as np
import PIL.Image
import pytest

from configs import tiny
from fsaf_jax import extract
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation import exported as exported_lib
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.models import registry
from fsaf_jax.training import setup
from tests.reference import ceiling

REPO = pathlib.Path(__file__).resolve().parents[2]

# Relative path -> (pid, camid 0-based) from data_pipelines.datasets.naming's schemes.
FILES = {
  "0002_c1s1_000451_03.jpg": (2, 0),  # Market-1501
  "sub/0007_c3s2_004521_01.JPG": (7, 2),  # Market-1501, upper-case extension
  "sub/-1_c2s1_000002_00.jpg": (-1, 1),  # Market-1501 junk: pid -1, real camera
  "sub/deeper/0001_c2_f0046182.jpeg": (-1, -1),  # Duke name but .jpeg: no scheme
  "sub/deeper/0005_c8_f0000001.jpg": (5, 7),  # DukeMTMC-reID
  "cuhk/0003_c2_1.png": (3, 1),  # CUHK03-NP
  "unrelated_name.jpg": (-1, -1),
}

# The subprocess shares the test session's persistent compilation cache.
_JAX_CACHE_ENV = {
  "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for i, rel in enumerate(FILES):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    size = (20 + 3 * i, 40 + 5 * i)  # (W, H): all differ from the config's size
    img = PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    img.save(path, format="PNG" if rel.endswith(".png") else "JPEG")
  (root / "notes.txt").write_text("not an image")
  return root


def _expected_feats(config, root, names, variables):
  """Independent path: PIL decode + resize per image, extractor over one batch."""
  h, w = config.input.image_size
  images = np.stack(
    [
      np.asarray(PIL.Image.open(root / n).convert("RGB").resize((w, h), PIL.Image.BILINEAR))
      for n in names
    ]
  )
  model = registry.create_model(config.model, 1)
  ex = extractor_lib.make_extractor(
    model, variables, batch_size=len(names), image_size=(h, w), flip=config.eval.flip
  )
  return ex(images)


def test_extract_folder(folder, tmp_path):
  config = tiny.get_config()
  out = tmp_path / "out" / "feats.npz"
  export = tmp_path / "extractor.jaxexport"
  result = extract.extract_folder(
    config,
    images=str(folder),
    out=str(out),
    export=str(export),
    batch_size=3,
    random_weights=True,
  )
  saved = np.load(out)
  assert sorted(saved.files) == ["camids", "feats", "file_names", "pids"]
  names = saved["file_names"].tolist()
  assert names == sorted(FILES, key=str)  # recursive, sorted, .txt skipped
  feats = saved["feats"]
  assert feats.shape[0] == len(FILES) and feats.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
  np.testing.assert_array_equal(feats, result["feats"])

  _, variables, _ = setup.initial_variables(config, 1, make_mesh())  # as training starts
  np.testing.assert_allclose(feats, _expected_feats(config, folder, names, variables), atol=2e-5)

  np.testing.assert_array_equal(saved["pids"], [FILES[n][0] for n in names])
  np.testing.assert_array_equal(saved["camids"], [FILES[n][1] for n in names])

  h, w = config.input.image_size
  first = PIL.Image.open(folder / names[0]).convert("RGB").resize((w, h), PIL.Image.BILINEAR)
  np.testing.assert_allclose(
    exported_lib.load_exported(export)(np.asarray(first)[None])[0], feats[0], atol=1e-5
  )


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image_is_named(folder, tmp_path, kind):
  if kind == "garbage":
    data = b"\xff\xd8\xff\xe0 not really a jpeg"
  else:
    data = (folder / "0002_c1s1_000451_03.jpg").read_bytes()
    data = data[: len(data) // 2]
  (folder / "sub" / "broken.jpg").write_bytes(data)
  with pytest.raises(ValueError, match="broken.jpg"):
    extract.extract_folder(
      tiny.get_config(), images=str(folder), out=str(tmp_path / "f.npz"), random_weights=True
    )
  assert not (tmp_path / "f.npz").exists()


def test_empty_or_missing_folder(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "readme.txt").write_text("x")
  with pytest.raises(ValueError, match="no .*images under"):
    extract.extract_folder(
      tiny.get_config(),
      images=str(tmp_path / "empty"),
      out=str(tmp_path / "f.npz"),
      random_weights=True,
    )
  with pytest.raises(NotADirectoryError, match="nowhere"):
    extract.extract_folder(
      tiny.get_config(),
      images=str(tmp_path / "nowhere"),
      out=str(tmp_path / "f.npz"),
      random_weights=True,
    )


def test_workdir_without_checkpoint_is_an_error(folder, tmp_path):
  # Restoring a real checkpoint: tests/fsaf_jax/training/test_checkpoint.py.
  with pytest.raises(FileNotFoundError, match="no checkpoint at /x"):
    extract.extract_folder(
      tiny.get_config(), images=str(folder), out=str(tmp_path / "f.npz"), workdir="/x"
    )


def test_cli_end_to_end(folder, tmp_path):
  out = tmp_path / "cli.npz"
  cmd = [
      sys.executable, "-m", "fsaf_jax.extract", "--config=configs/tiny.py",
      f"--images={folder}", f"--out={out}", "--batch_size=4", "--config.eval.flip=True",
      "--random_weights",
  ]  # fmt: skip
  env = {**os.environ, **_JAX_CACHE_ENV, "PYTHONPATH": str(REPO)}
  ceiling.run(cmd, check=True, cwd=REPO, env=env, ceiling=ceiling.LONG)
  saved = np.load(out)
  config = tiny.get_config()
  config.eval.flip = True
  _, variables, _ = setup.initial_variables(config, 1, make_mesh())  # as training starts
  names = saved["file_names"].tolist()
  assert len(names) == len(FILES)
  np.testing.assert_allclose(
    saved["feats"], _expected_feats(config, folder, names, variables), atol=2e-5
  )
