"""Per-backend XLA options of the inference step: chosen by backend, accepted by this
jaxlib, change how a conv + epilogue compiles on the CPU and not what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from fsaf_jax.evaluation import compiler_options


def test_options_by_backend():
  assert compiler_options.inference_compiler_options("cpu") == (
    compiler_options.CPU_INFERENCE_OPTIONS
  )
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert compiler_options.inference_compiler_options(platform) is None


def _conv_bn_relu(x, w, scale, shift):
  y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y * scale + shift)


def test_cpu_options_fuse_the_epilogue_and_keep_the_values():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 16, 8, 32)).astype(np.float32)
  w = rng.standard_normal((3, 3, 32, 64)).astype(np.float32) * 0.1
  scale = rng.uniform(0.5, 1.5, 64).astype(np.float32)
  shift = rng.standard_normal(64).astype(np.float32)
  options = compiler_options.inference_compiler_options("cpu")
  plain = jax.jit(_conv_bn_relu).lower(x, w, scale, shift).compile()
  tuned = jax.jit(_conv_bn_relu, compiler_options=options).lower(x, w, scale, shift).compile()
  assert plain.as_text() != tuned.as_text()  # the options reach the compiler
  np.testing.assert_allclose(
    np.asarray(tuned(x, w, scale, shift)), np.asarray(plain(x, w, scale, shift)), atol=1e-5
  )
  # And both equal a float64 NumPy conv (im2col), so neither path is wrong.
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = np.stack([xp[:, i : i + 16, j : j + 8] for i in range(3) for j in range(3)], axis=3)
  ref = np.maximum(cols.reshape(2, 16, 8, -1) @ w.reshape(-1, 64) * scale + shift, 0)
  np.testing.assert_allclose(np.asarray(tuned(x, w, scale, shift)), ref, atol=1e-4)


def test_rejected_options_fall_back_to_none(monkeypatch):
  bogus = {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"}
  monkeypatch.setattr(compiler_options, "CPU_INFERENCE_OPTIONS", bogus)
  assert compiler_options.inference_compiler_options("cpu") is None


def test_extractor_uses_them():
  from configs import tiny
  from fsaf_jax.evaluation.extractor import make_extractor
  from fsaf_jax.models import registry

  config = tiny.get_config()
  model = registry.create_model(config.model, 3)
  h, w = config.input.image_size
  variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, h, w, 3)), train=False))(
    jax.random.key(0)
  )
  extractor = make_extractor(model, variables, batch_size=2, image_size=(h, w))
  expected = compiler_options.CPU_INFERENCE_OPTIONS if jax.default_backend() == "cpu" else None
  assert extractor.compiler_options == expected
