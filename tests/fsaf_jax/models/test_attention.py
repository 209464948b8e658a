"""BoTNet MHSA: relative logits vs a brute-force loop, attention vs a NumPy forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.attention import MHSA, relative_index, relative_logits


def test_relative_index_hand_case():
  np.testing.assert_array_equal(relative_index(3), [[2, 3, 4], [1, 2, 3], [0, 1, 2]])


def test_relative_logits_match_brute_force_lookup():
  rng = np.random.default_rng(0)
  n, heads, height, width, d = 2, 2, 3, 5, 4
  q = rng.normal(size=(n, heads, height, width, d))
  rel_h = rng.normal(size=(2 * height - 1, d))
  rel_w = rng.normal(size=(2 * width - 1, d))
  got = np.asarray(relative_logits(jnp.asarray(q), jnp.asarray(rel_h), jnp.asarray(rel_w)))
  assert got.shape == (n, heads, height, width, height, width)
  expected = np.zeros(got.shape)
  for b in range(n):
    for h in range(heads):
      for iy in range(height):
        for ix in range(width):
          for jy in range(height):
            for jx in range(width):
              qi = q[b, h, iy, ix]
              expected[b, h, iy, ix, jy, jx] = (
                qi @ rel_h[(jy - iy) + height - 1] + qi @ (rel_w[(jx - ix) + width - 1])
              )
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_relative_logits_reject_wrong_table():
  with pytest.raises(ValueError, match="do not fit"):
    relative_logits(jnp.zeros((1, 1, 3, 2, 4)), jnp.zeros((4, 4)), jnp.zeros((3, 4)))


def _numpy_mhsa(x, params, heads, stride):
  """Brute-force BoTNet MHSA: loops over query and key positions."""
  x = x.astype(np.float64)
  n, height, width, _ = x.shape
  wq, wk, wv = (params[k]["kernel"][0, 0].astype(np.float64) for k in ("query", "key", "value"))
  rel_h, rel_w = params["rel_h"].astype(np.float64), params["rel_w"].astype(np.float64)
  features = wq.shape[1]
  d = features // heads
  q, k, v = x @ wq, x @ wk, x @ wv
  out = np.zeros((n, height, width, features))
  weights = np.zeros((n, heads, height * width, height * width))
  for b in range(n):
    for h in range(heads):
      sl = slice(h * d, (h + 1) * d)
      for iy in range(height):
        for ix in range(width):
          qi = q[b, iy, ix, sl] / np.sqrt(d)
          logits = np.zeros((height, width))
          for jy in range(height):
            for jx in range(width):
              logits[jy, jx] = qi @ (
                k[b, jy, jx, sl] + rel_h[jy - iy + height - 1] + rel_w[jx - ix + width - 1]
              )
          a = np.exp(logits - logits.max())
          a /= a.sum()
          weights[b, h, iy * width + ix] = a.ravel()
          out[b, iy, ix, sl] = np.einsum("yx,yxd->d", a, v[b, :, :, sl])
  if stride == 2:
    out = out.reshape(n, height // 2, 2, width // 2, 2, features).mean(axis=(2, 4))
  return out, weights


@pytest.mark.parametrize("stride", [1, 2])
def test_mhsa_matches_numpy_forward(stride):
  rng = np.random.default_rng(stride)
  x = rng.normal(size=(2, 4, 6, 8)).astype(np.float32)
  model = MHSA(features=12, num_heads=3, strides=stride)
  variables = model.init(jax.random.key(0), x)
  params = jax.tree.map(lambda a: rng.normal(0, 0.5, a.shape).astype(np.float32), variables)
  params = params["params"]
  assert params["rel_h"].shape == (7, 4) and params["rel_w"].shape == (11, 4)
  assert params["query"]["kernel"].shape == (1, 1, 8, 12)
  assert set(params) == {"query", "key", "value", "rel_h", "rel_w"}
  assert set(params["query"]) == {"kernel"}  # bias-free projections
  y, state = model.apply({"params": params}, x, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  expected, expected_weights = _numpy_mhsa(x, params, 3, stride)
  assert y.shape == (2, 4 // stride, 6 // stride, 12)
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(weights), expected_weights, rtol=1e-4, atol=1e-5)


def test_attention_weights_sum_to_one_over_all_keys_in_float32_under_bf16():
  x = jax.random.normal(jax.random.key(0), (2, 4, 3, 8))
  model = MHSA(features=8, num_heads=4, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(1), x)
  y, state = model.apply(variables, x, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (2, 4, 12, 12)  # softmax over all H*W = 12 keys
  assert weights.dtype == jnp.float32
  assert y.dtype == jnp.bfloat16
  assert jax.tree.leaves(variables)[0].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(weights).sum(-1), 1.0, rtol=1e-6)
  assert (np.asarray(weights) > 0).all()


def test_stride_two_halves_and_equals_pooled_stride_one():
  x = jax.random.normal(jax.random.key(0), (1, 6, 4, 8))
  variables = MHSA(features=8).init(jax.random.key(1), x)
  y1 = MHSA(features=8).apply(variables, x)
  y2 = MHSA(features=8, strides=2).apply(variables, x)  # same tables: sized from the input
  assert y2.shape == (1, 3, 2, 8)
  np.testing.assert_allclose(
    np.asarray(y2), np.asarray(y1).reshape(1, 3, 2, 2, 2, 8).mean((2, 4)), rtol=1e-5, atol=1e-6
  )


def test_bad_settings_raise():
  with pytest.raises(ValueError, match="even feature map"):
    MHSA(features=8, strides=2).init(jax.random.key(0), jnp.zeros((1, 5, 4, 8)))
  with pytest.raises(ValueError, match="num_heads"):
    MHSA(features=6, num_heads=4).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))
