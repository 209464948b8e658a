"""im2col form of the k x k convolution: values and gradients equal to
`lax.conv_general_dilated`'s; chosen on the CPU at small maps only, portable elsewhere."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fsaf_jax.models.conv import conv_as_matmul, conv_general_dilated, is_small_map

NHWC = ("NHWC", "HWIO", "NHWC")
# (input [N, H, W, Cin], kernel (kh, kw), Cout, strides, padding): the ResNet 3x3 at
# Conv4_x / Conv5_x maps of 64x32 images (4x2, 2x1, 8x4 stride 2), odd shapes, 7x7 s2.
CASES = [
  ((2, 4, 2, 8), (3, 3), 6, (1, 1), ((1, 1), (1, 1))),
  ((2, 2, 1, 8), (3, 3), 6, (1, 1), ((1, 1), (1, 1))),
  ((3, 8, 4, 5), (3, 3), 7, (2, 2), ((1, 1), (1, 1))),
  ((2, 5, 3, 4), (3, 2), 3, (2, 1), ((0, 2), (1, 0))),
  ((1, 9, 7, 3), (7, 7), 4, (2, 2), ((3, 3), (3, 3))),
]


def _conv(x, k, strides, padding):
  return lax.conv_general_dilated(
    x, k, strides, padding, dimension_numbers=NHWC, precision=lax.Precision.HIGHEST
  )


@pytest.mark.parametrize("shape,window,cout,strides,padding", CASES)
def test_values_and_gradients_equal_the_convolution(shape, window, cout, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  k = jnp.asarray(rng.standard_normal((*window, shape[-1], cout)), jnp.float32)
  want = _conv(x, k, strides, padding)
  got = conv_as_matmul(x, k, strides, padding, precision=lax.Precision.HIGHEST)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)  # a random cotangent
  _, want_vjp = jax.vjp(lambda a, b: _conv(a, b, strides, padding), x, k)
  _, got_vjp = jax.vjp(
    lambda a, b: conv_as_matmul(a, b, strides, padding, lax.Precision.HIGHEST), x, k
  )
  for got_grad, want_grad in zip(got_vjp(g), want_vjp(g), strict=True):
    np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-4)


def test_small_map_rule():
  same = ((1, 1), (1, 1))
  assert is_small_map((4, 2), (3, 3), (1, 1), same)  # 8 pixels < 9
  assert is_small_map((2, 1), (3, 3), (1, 1), same)
  assert is_small_map((8, 4), (3, 3), (2, 2), same)  # output 4x2
  assert not is_small_map((4, 3), (3, 3), (1, 1), same)
  assert not is_small_map((16, 8), (3, 3), (2, 2), same)


def _module_fn(x_shape):
  conv = nn.Conv(
    6, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, conv_general_dilated=conv_general_dilated
  )
  x = jnp.ones(x_shape, jnp.float32)
  variables = conv.init(jax.random.key(0), x)

  def loss(v, x):
    return jnp.sum(conv.apply(v, x) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), variables, x


@pytest.mark.parametrize("x_shape", [(2, 4, 2, 8), (2, 8, 6, 8)])
def test_module_matches_plain_nn_conv_with_the_same_parameters(x_shape):
  fn, variables, _ = _module_fn(x_shape)
  plain = nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  x = jnp.asarray(np.random.default_rng(1).standard_normal(x_shape), jnp.float32)
  assert jax.tree.map(jnp.shape, plain.init(jax.random.key(0), x)) == jax.tree.map(
    jnp.shape, variables
  )
  want = jax.value_and_grad(lambda v, x: jnp.sum(plain.apply(v, x) ** 2), argnums=(0, 1))
  (got_loss, got_grads), (want_loss, want_grads) = fn(variables, x), want(variables, x)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_uses_matmuls_at_small_maps_and_the_convolution_elsewhere():
  small, variables, x = _module_fn((2, 4, 2, 8))
  assert " convolution(" not in small.lower(variables, x).compile().as_text()
  large, variables, x = _module_fn((2, 8, 6, 8))
  assert " convolution(" in large.lower(variables, x).compile().as_text()


def test_accelerators_keep_the_convolution_at_small_maps():
  fn, variables, x = _module_fn((2, 4, 2, 8))
  module = jax.export.export(fn, platforms=("cuda", "tpu"))(variables, x).mlir_module()
  assert "stablehlo.convolution" in module and "stablehlo.dot_general" not in module
