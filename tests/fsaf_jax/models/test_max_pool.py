"""Slice-form max pooling: values and gradients equal to nn.max_pool, ties included."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.max_pool import max_pool, max_pool_fn


def _tied_input(shape, dtype=jnp.float32, seed=0):
  """Post-ReLU-like values on a coarse grid: many exact ties inside each window."""
  rng = np.random.default_rng(seed)
  x = np.maximum(rng.integers(-3, 4, shape), 0).astype(np.float32) / 2
  return jnp.asarray(x, dtype)


def _numpy_first_max_pool(x, window, strides, padding):
  """Brute-force reference: values and the (row-major) first argmax of each window."""
  x = np.asarray(x, np.float64)
  (pt, pb), (pl, pr) = padding
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-np.inf)
  n, h, w, c = xp.shape
  oh, ow = (h - window[0]) // strides[0] + 1, (w - window[1]) // strides[1] + 1
  out = np.empty((n, oh, ow, c))
  arg = np.empty((n, oh, ow, c, 2), int)
  for b in range(n):
    for i in range(oh):
      for j in range(ow):
        for ch in range(c):
          patch = xp[b, i * strides[0] : i * strides[0] + window[0], j * strides[1] :, ch]
          patch = patch[:, : window[1]]
          k = int(np.argmax(patch))  # first maximum, row-major
          out[b, i, j, ch] = patch.flat[k]
          arg[b, i, j, ch] = (
            i * strides[0] + k // window[1] - pt,
            j * strides[1] + k % window[1] - pl,
          )
  return out, arg


CASES = [
  ((3, 3), (2, 2), ((1, 1), (1, 1)), (2, 9, 7, 3)),  # the ResNet stem pool, odd sizes
  ((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 8, 6, 2)),
  ((2, 2), (2, 2), ((0, 0), (0, 0)), (2, 6, 4, 3)),  # fusion pools: window = stride
  ((4, 4), (4, 4), ((0, 0), (0, 0)), (1, 8, 8, 2)),
]


@pytest.mark.parametrize("window, strides, padding, shape", CASES)
def test_values_and_gradients_match_flax_and_numpy(window, strides, padding, shape):
  x = _tied_input(shape)
  cotangent = jax.random.normal(
    jax.random.key(1), np.shape(nn.max_pool(x, window, strides, padding))
  )
  flax_pool = lambda x: nn.max_pool(x, window, strides=strides, padding=padding)
  ours_pool = lambda x: max_pool(x, window, strides, padding)

  expected, arg = _numpy_first_max_pool(x, window, strides, padding)
  np.testing.assert_array_equal(np.asarray(ours_pool(x)), expected)
  np.testing.assert_array_equal(np.asarray(ours_pool(x)), np.asarray(flax_pool(x)))

  grad = jax.vjp(ours_pool, x)[1](cotangent)[0]
  np.testing.assert_array_equal(
    np.asarray(grad), np.asarray(jax.vjp(flax_pool, x)[1](cotangent)[0])
  )
  # NumPy: every output's cotangent lands on its window's first maximum.
  expected_grad = np.zeros(shape)
  g = np.asarray(cotangent)
  for idx in np.ndindex(*g.shape):
    b, _, _, ch = idx
    r, c = arg[idx]
    expected_grad[b, r, c, ch] += g[idx]
  np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-6, atol=1e-6)


def test_forward_mode_and_bfloat16():
  x = _tied_input((1, 6, 6, 2), jnp.bfloat16)
  window, strides, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
  y = max_pool(x, window, strides, padding)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y), np.asarray(nn.max_pool(x, window, strides, padding)))
  tangent = jnp.ones_like(x)
  _, jvp = jax.jvp(lambda x: max_pool(x, window, strides, padding), (x,), (tangent,))
  assert np.all(np.asarray(jvp, np.float32) == 1.0)  # the selected input's tangent


def test_max_pool_fn_picks_an_equivalent_pool():
  x = _tied_input((2, 8, 6, 2))
  for train in (False, True):
    pool = max_pool_fn(train)
    np.testing.assert_array_equal(
      np.asarray(pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))),
      np.asarray(nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))),
    )
  # Train mode also gives the same gradient (through lax.platform_dependent).
  grads = [
    jax.grad(lambda v, t=train: max_pool_fn(t)(v, (3, 3), (2, 2), ((1, 1), (1, 1))).sum())(x)
    for train in (False, True)
  ]
  np.testing.assert_array_equal(np.asarray(grads[0]), np.asarray(grads[1]))


@pytest.mark.parametrize("platform", ["cpu", "tpu", "cuda"])
def test_train_mode_pool_is_chosen_for_the_lowering_platform(platform):
  # The gradient of reduce_window max is select_and_scatter (slow on the CPU backend):
  # the CPU lowering must use the strided-slice form, GPU / TPU the portable one, even
  # when this CPU-only machine lowers for them.
  x = _tied_input((2, 8, 6, 2))
  grad = jax.jit(jax.grad(lambda v: max_pool_fn(True)(v, (3, 3), (2, 2), ((1, 1), (1, 1))).sum()))
  module = jax.export.export(grad, platforms=(platform,))(x).mlir_module()
  assert ("select_and_scatter" in module) == (platform != "cpu")
  assert ("reduce_window" in module) == (platform != "cpu")


def test_window_too_large():
  with pytest.raises(ValueError, match="does not fit"):
    max_pool(jnp.zeros((1, 2, 2, 1)), (3, 3), (1, 1))


def test_fusion_pools_same_values_and_gradients_in_train_mode():
  from fsaf_jax.models.fusion import fuse_features

  conv3, conv4, conv5 = (
    _tied_input(s, seed=i) for i, s in enumerate([(2, 8, 4, 3), (2, 4, 2, 5), (2, 2, 1, 4)])
  )
  cotangent = jax.random.normal(jax.random.key(2), (2, 2, 1, 12))
  results = []
  for train in (False, True):
    fn = lambda a, b, c, train=train: fuse_features(a, b, c, train=train)
    out, vjp = jax.vjp(fn, conv3, conv4, conv5)
    results.append((out, *vjp(cotangent)))
  for a, b in zip(*results, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
