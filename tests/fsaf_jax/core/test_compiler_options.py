"""Per-backend XLA options of the train and inference steps: chosen by backend, accepted
by this jaxlib, change how convolutions compile on the CPU and not what they compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from benchmarks.profile_classes import parse_entry
from fsaf_jax.core import compiler_options


def test_options_by_backend():
  assert compiler_options.inference_compiler_options("cpu") == (
    compiler_options.CPU_INFERENCE_OPTIONS
  )
  assert compiler_options.train_compiler_options("cpu") == compiler_options.CPU_TRAIN_OPTIONS
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert compiler_options.inference_compiler_options(platform) is None
    assert compiler_options.train_compiler_options(platform) is None


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


def _conv_loss(x, w):
  y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sum(jax.nn.relu(y) ** 2)


def _convolutions(hlo_text: str) -> tuple[int, int]:
  """(XLA `convolution` instructions, YNNPACK fusions holding one) of a compiled step."""
  insts = parse_entry(hlo_text).values()
  plain = sum(i["opcode"] == "convolution" for i in insts)
  in_ynn = sum(i["library"] == "__ynn_fusion" and "convolution" in i["body_ops"] for i in insts)
  return plain, in_ynn


def test_cpu_train_options_take_convolutions_off_ynnpack_and_keep_the_values():
  """With the train options the forward and both gradients of a 64-channel convolution
  are XLA convolutions (by default YNNPACK fusions take some), and loss and gradients
  equal the default compile's and a float64 NumPy reference's."""
  if jax.default_backend() != "cpu":
    pytest.skip("the options are the CPU backend's")
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 4, 64)).astype(np.float32)
  w = rng.standard_normal((3, 3, 64, 16)).astype(np.float32) * 0.05
  grad = jax.value_and_grad(_conv_loss, argnums=(0, 1))
  plain = jax.jit(grad).lower(x, w).compile()
  options = compiler_options.train_compiler_options("cpu")
  tuned = jax.jit(grad, compiler_options=options).lower(x, w).compile()
  assert _convolutions(plain.as_text())[1] >= 1  # by default YNNPACK takes some of them
  assert _convolutions(tuned.as_text()) == (3, 0)
  (l_plain, g_plain), (l_tuned, g_tuned) = plain(x, w), tuned(x, w)
  np.testing.assert_allclose(float(l_tuned), float(l_plain), rtol=1e-5)
  for a, b in zip(g_tuned, g_plain, strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)
  # float64 reference of the forward (im2col) and the weight gradient.
  xp = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
  cols = np.stack([xp[:, i : i + 8, j : j + 4] for i in range(3) for j in range(3)], axis=3)
  cols = cols.reshape(2 * 8 * 4, 9 * 64)
  y = cols @ w.reshape(9 * 64, 16).astype(np.float64)
  np.testing.assert_allclose(float(l_tuned), np.sum(np.maximum(y, 0) ** 2), rtol=1e-5)
  dw = cols.T @ (2 * np.maximum(y, 0))
  np.testing.assert_allclose(np.asarray(g_tuned[1]).reshape(9 * 64, 16), dw, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
  "name, choose",
  [
    ("CPU_INFERENCE_OPTIONS", compiler_options.inference_compiler_options),
    ("CPU_TRAIN_OPTIONS", compiler_options.train_compiler_options),
  ],
)
def test_rejected_options_fall_back_to_none(monkeypatch, name, choose):
  bogus = {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"}
  monkeypatch.setattr(compiler_options, name, bogus)
  assert choose("cpu") is None


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


def test_train_step_uses_them():
  from configs import tiny
  from fsaf_jax.core.mesh import make_mesh
  from fsaf_jax.models import registry
  from fsaf_jax.training.train_step import make_train_step

  config = tiny.get_config()
  step = make_train_step(registry.create_model(config.model, 3), config.loss, make_mesh())
  expected = compiler_options.CPU_TRAIN_OPTIONS if jax.default_backend() == "cpu" else None
  assert step.compiler_options == expected
