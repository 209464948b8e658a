"""Global average and GeM pooling against NumPy."""

import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.pooling import gem_pool, global_avg_pool


def test_avg_and_gem_match_numpy():
  x = np.random.default_rng(0).uniform(0, 3, (2, 4, 3, 5)).astype(np.float32)
  np.testing.assert_allclose(global_avg_pool(jnp.asarray(x)), x.mean((1, 2)), rtol=1e-6)
  expected = (x.astype(np.float64) ** 3).mean((1, 2)) ** (1 / 3)
  np.testing.assert_allclose(gem_pool(jnp.asarray(x), 3.0), expected, rtol=1e-5)
  np.testing.assert_allclose(gem_pool(jnp.asarray(x), 1.0), x.mean((1, 2)), rtol=1e-5)


def test_bf16_input_gives_float32_output():
  x = jnp.ones((1, 2, 2, 3), jnp.bfloat16)
  assert global_avg_pool(x).dtype == jnp.float32 and gem_pool(x).dtype == jnp.float32


def test_gem_p_must_be_positive():
  with pytest.raises(ValueError, match="gem_p=0"):
    gem_pool(jnp.ones((1, 2, 2, 3)), 0)
