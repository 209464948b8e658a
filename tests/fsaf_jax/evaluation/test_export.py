"""Tests of the `jax.export` feature extractor: symbolic batch, reload, no model code."""

import functools
import os
import pathlib
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from fsaf_jax.evaluation import export as export_lib
from fsaf_jax.evaluation import exported as exported_lib
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.models import registry
from tests.reference import ceiling

REPO = pathlib.Path(__file__).resolve().parents[3]

# The subprocess shares the test session's persistent compilation cache.
_JAX_CACHE_ENV = {
  "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


@pytest.fixture(scope="module")
def setup():
  config = tiny.get_config()
  model = registry.create_model(config.model, 5)
  h, w = config.input.image_size
  variables = jax.jit(functools.partial(model.init, train=False))(
    jax.random.key(1), jnp.zeros((1, h, w, 3))
  )
  return model, variables, (h, w)


def _images(n, image_size, seed):
  h, w = image_size
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("flip", [False, True])
def test_exported_matches_jitted_extractor_for_two_batch_sizes(setup, tmp_path, flip):
  model, variables, image_size = setup
  path = tmp_path / "extractor.jaxexport"
  exported = export_lib.export_extractor(model, variables, path, image_size=image_size, flip=flip)
  assert not isinstance(exported.in_avals[0].shape[0], int)  # symbolic batch
  loaded = exported_lib.load_exported(path)
  assert loaded.image_size == image_size
  for n in (3, 5):
    images = _images(n, image_size, seed=n)
    ex = extractor_lib.make_extractor(
      model, variables, batch_size=n, image_size=image_size, flip=flip
    )
    out = loaded(images)
    assert out.shape == (n, loaded.embedding_dim) and out.dtype == np.float32
    np.testing.assert_allclose(out, ex(images), atol=1e-5)


def test_reloads_without_flax_or_model_code(setup, tmp_path):
  """A fresh process loads and runs the file; neither flax nor the model is imported."""
  model, variables, image_size = setup
  path = tmp_path / "extractor.jaxexport"
  export_lib.export_extractor(model, variables, path, image_size=image_size)
  images = _images(2, image_size, seed=7)
  np.save(tmp_path / "images.npy", images)
  expected = extractor_lib.make_extractor(model, variables, batch_size=2, image_size=image_size)(
    images
  )
  script = textwrap.dedent(f"""
      import sys
      import numpy as np
      from fsaf_jax.evaluation.exported import load_exported
      feats = load_exported({str(path)!r})(np.load({str(tmp_path / "images.npy")!r}))
      np.save({str(tmp_path / "feats.npy")!r}, feats)
      loaded = sorted(m for m in sys.modules if m == "flax" or m.startswith("fsaf_jax.models"))
      assert not loaded, loaded
  """)
  env = {**os.environ, **_JAX_CACHE_ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
  ceiling.run([sys.executable, "-c", script], check=True, cwd=REPO, env=env, ceiling=ceiling.SHORT)
  np.testing.assert_allclose(np.load(tmp_path / "feats.npy"), expected, atol=1e-5)


def test_load_errors(setup, tmp_path):
  _, _, (h, w) = setup
  with pytest.raises(FileNotFoundError, match="missing.bin"):
    exported_lib.load_exported(tmp_path / "missing.bin")
  junk = tmp_path / "junk.bin"
  junk.write_bytes(b"not a jax export")
  with pytest.raises(ValueError, match="junk.bin"):
    exported_lib.load_exported(junk)


def test_call_with_wrong_image_size_names_the_file(setup, tmp_path):
  model, variables, image_size = setup
  path = tmp_path / "e.jaxexport"
  export_lib.export_extractor(model, variables, path, image_size=image_size)
  loaded = exported_lib.load_exported(path)
  h, w = image_size
  with pytest.raises(ValueError, match="e.jaxexport"):
    loaded(np.zeros((1, h, w + 2, 3), np.uint8))
