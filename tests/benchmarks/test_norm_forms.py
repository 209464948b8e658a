"""`benchmarks/norm_forms.py` compares against Flax's own normalisation form."""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import norm_forms
from fsaf_jax.models import norm


@pytest.mark.parametrize("use_bias", [True, False])
def test_flax_form_is_flax_batch_norm(use_bias):
  """Bit for bit the eval output of nn.BatchNorm (the same operations in the same order)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(2, 3, (2, 3, 4, 5)), jnp.float32)
  p = {"scale": jnp.asarray(rng.uniform(0.5, 2, 5), jnp.float32)}
  if use_bias:
    p["bias"] = jnp.asarray(rng.normal(0, 1, 5), jnp.float32)
  stats = {"mean": jnp.asarray(rng.normal(0, 1, 5), jnp.float32), "var": jnp.full(5, 1.5)}
  want = nn.BatchNorm(use_running_average=True, use_bias=use_bias, epsilon=1e-5).apply(
    {"params": p, "batch_stats": stats}, x
  )
  got = norm_forms.flax_form(x, stats["mean"], stats["var"], p["scale"], p.get("bias"), 1e-5)
  np.testing.assert_array_equal(got, want)
  # ... and the folded form differs from it by rounding only.
  folded = norm.normalize(x, stats["mean"], stats["var"], p["scale"], p.get("bias"), 1e-5)
  np.testing.assert_allclose(folded, want, rtol=1e-5, atol=1e-5)
