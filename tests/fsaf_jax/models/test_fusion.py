"""Feature fusion against a NumPy brute-force max-pool."""

import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.fusion import fuse_features


def _max_pool(x, fy, fx):
  n, h, w, c = x.shape
  out = np.empty((n, h // fy, w // fx, c), x.dtype)
  for i in range(h // fy):
    for j in range(w // fx):
      out[:, i, j] = x[:, i * fy : (i + 1) * fy, j * fx : (j + 1) * fx].max(axis=(1, 2))
  return out


@pytest.mark.parametrize("conv5_hw, f3, f4", [((2, 1), 4, 2), ((4, 2), 2, 1)])
def test_pools_conv3_conv4_onto_conv5_and_concatenates(conv5_hw, f3, f4):
  rng = np.random.default_rng(0)
  conv3 = rng.normal(size=(2, 8, 4, 3)).astype(np.float32)
  conv4 = rng.normal(size=(2, 4, 2, 5)).astype(np.float32)
  conv5 = rng.normal(size=(2, *conv5_hw, 7)).astype(np.float32)
  got = np.asarray(fuse_features(jnp.asarray(conv3), jnp.asarray(conv4), jnp.asarray(conv5)))
  assert got.shape == (2, *conv5_hw, 15)
  np.testing.assert_array_equal(got[..., :3], _max_pool(conv3, f3, f3))
  np.testing.assert_array_equal(got[..., 3:8], _max_pool(conv4, f4, f4))
  np.testing.assert_array_equal(got[..., 8:], conv5)


def test_sizes_that_do_not_divide_are_an_error():
  with pytest.raises(ValueError, match="fusion='concat'.*Conv4_x \\(5x2\\)"):
    fuse_features(jnp.zeros((1, 9, 4, 1)), jnp.zeros((1, 5, 2, 1)), jnp.zeros((1, 3, 1, 1)))
