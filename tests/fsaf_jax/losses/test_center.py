"""Centre loss against a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.losses.center import center_loss, init_centers


def _reference(feats, labels, centers):
  total = 0.0
  for f, y in zip(np.asarray(feats, np.float64), labels, strict=True):
    total += sum((f[c] - centers[y][c]) ** 2 for c in range(len(f)))
  return total / len(feats)


def test_matches_loop_and_gradients():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(6, 5)).astype(np.float32)
  centers = rng.normal(size=(4, 5)).astype(np.float32)
  labels = np.array([0, 3, 3, 1, 0, 0])
  got = center_loss(jnp.asarray(feats), labels, jnp.asarray(centers))
  np.testing.assert_allclose(got, _reference(feats, labels, centers), rtol=1e-5)
  g_feat, g_cent = jax.grad(center_loss, argnums=(0, 2))(
    jnp.asarray(feats), labels, jnp.asarray(centers)
  )
  # d/df_i = 2 (f_i - c_y) / B; d/dc_k = -2 sum_{i: y_i = k} (f_i - c_k) / B.
  want_f = 2 * (feats - centers[labels]) / 6
  want_c = np.zeros_like(centers)
  for i, y in enumerate(labels):
    want_c[y] -= 2 * (feats[i] - centers[y]) / 6
  np.testing.assert_allclose(g_feat, want_f, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g_cent, want_c, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(g_cent)[2], 0)  # class 2 absent: its centre stays


def test_init_centers_shape_and_bad_shapes():
  c = init_centers(jax.random.key(0), 7, 3)
  assert c.shape == (7, 3) and c.dtype == jnp.float32
  with pytest.raises(ValueError, match="agree on C"):
    center_loss(jnp.zeros((2, 3)), jnp.zeros(2, jnp.int32), jnp.zeros((4, 5)))
