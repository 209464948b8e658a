"""ONNX export of the extractor: onnxruntime's embeddings against the JAX extractor's.

Needs the optional extra (requirements-onnx.txt, installed by requirements-test.txt);
skipped only where it is missing.
"""

import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from configs import baseline, tiny
from fsaf_jax import extract
from fsaf_jax.evaluation import onnx_export
from fsaf_jax.evaluation.extractor import make_embed_fn
from fsaf_jax.models import registry

pytest.importorskip("jax2onnx")
ort = pytest.importorskip("onnxruntime")

# float32 through ~60 layers, two runtimes with different kernels: the embeddings
# (unit norm) agree to ~1e-7 (measured: docs/weights_and_onnx.md).
ATOL = 1e-5


def _session(path) -> "ort.InferenceSession":
  options = ort.SessionOptions()
  options.log_severity_level = 3  # its shape-merge warnings on the layout transposes
  return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, images: np.ndarray) -> np.ndarray:
  (out,) = session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: images})
  return out


def _random_variables(model, image_size, seed=0):
  """`model.init` plus noise: BN statistics and scales away from their trivial values."""
  h, w = image_size
  init = jax.jit(lambda r: model.init(r, jnp.zeros((1, h, w, 3)), train=False))
  variables = init(jax.random.key(seed))
  noise = jax.random.key(seed + 1)

  def perturb(path, a):
    if path[-1].key == "var":
      return jnp.abs(a) + 0.5
    key = jax.random.fold_in(noise, zlib.crc32(jax.tree_util.keystr(path).encode()) % (1 << 31))
    return a + 0.05 * jax.random.normal(key, a.shape)

  return jax.tree_util.tree_map_with_path(perturb, variables)


def test_extract_onnx_flag_matches_the_jax_extractor_tiny(tmp_path):
  """`extract --onnx` on the tiny FSAF (IBN-a, MHSA, fusion) with every optional op in
  one export (ECA per block, GeM, last stride 1, flip on): the ONNX model's embeddings
  equal the .npz's (the JAX extractor), for batches of 1 and 3."""
  rng = np.random.default_rng(0)
  images = tmp_path / "images"
  images.mkdir()
  for i in range(3):
    PIL.Image.fromarray(rng.integers(0, 256, (70, 30, 3), np.uint8)).save(images / f"{i}.png")
  config = tiny.get_config()
  config.eval.flip = True
  config.model.update(pooling="gem", eca_placement="block", last_stride=1)
  out, onnx_path = tmp_path / "feats.npz", tmp_path / "extractor.onnx"
  result = extract.extract_folder(
    config, images=str(images), out=str(out), random_weights=True, onnx=str(onnx_path)
  )
  session = _session(onnx_path)
  assert [d for d in session.get_inputs()[0].shape[1:]] == [64, 32, 3]
  assert not isinstance(session.get_inputs()[0].shape[0], int)  # symbolic batch
  h, w = config.input.image_size
  batch = np.stack([extract.load_image(images / name, (h, w)) for name in result["file_names"]])
  got = np.concatenate([_run(session, batch[:1]), _run(session, batch[1:])])
  diff = np.abs(got - result["feats"]).max()
  print(f"tiny (flip) max abs difference ONNX vs JAX: {diff:.2e}")
  assert got.shape == result["feats"].shape == (3, 448)
  assert diff < ATOL


# The same export in other settings (`-m slow`); the default set exports the tiny model
# through `extract --onnx` above.
@pytest.mark.slow
def test_onnx_export_tiny_defaults(tmp_path):
  """The tiny config as it is: ECA per stage, average pooling, last stride 2."""
  _check_against_jax(tiny.get_config(), tmp_path, num_images=2)


@pytest.mark.slow
def test_onnx_export_baseline_full_size(tmp_path):
  """`configs/baseline.py` (ResNet50-IBN-a, 256x128): two images."""
  _check_against_jax(baseline.get_config(), tmp_path, num_images=2)


def _check_against_jax(config, tmp_path, *, num_images):
  model = registry.create_model(config.model, 8)
  image_size = tuple(config.input.image_size)
  variables = _random_variables(model, image_size)
  path = tmp_path / "extractor.onnx"
  size = onnx_export.export_onnx(model, variables, path, image_size=image_size)
  assert path.stat().st_size == size
  images = np.random.default_rng(1).integers(0, 256, (num_images, *image_size, 3), np.uint8)
  got = _run(_session(path), images)
  want = np.asarray(jax.jit(make_embed_fn(model))(variables, images))
  diff = np.abs(got - want).max()
  print(f"{config.model.backbone} {image_size} max abs difference ONNX vs JAX: {diff:.2e}")
  assert got.shape == want.shape
  assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  assert diff < ATOL


def test_onnx_without_the_extra_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` raises ImportError
  with pytest.raises(onnx_export.OnnxExportError, match="requirements-onnx.txt"):
    extract.check_arguments(
      tiny.get_config(),
      images=str(tmp_path),
      out=str(tmp_path / "f.npz"),
      workdir=None,
      export=None,
      random_weights=True,
      onnx=str(tmp_path / "e.onnx"),
    )
