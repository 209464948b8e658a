"""ECA: kernel-size rule and forward against a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.models.eca import ECA, eca_kernel_size


@pytest.mark.parametrize(
  "channels, k", [(64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7), (2, 3), (8, 3)]
)
def test_kernel_size(channels, k):
  assert eca_kernel_size(channels) == k


def test_forward_matches_numpy_loop():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4, 256)).astype(np.float32)
  model = ECA()
  variables = model.init(jax.random.key(0), x)
  assert variables["params"]["conv"]["kernel"].shape == (5, 1, 1)
  assert set(variables["params"]["conv"]) == {"kernel"}  # no bias
  kernel = rng.normal(size=(5, 1, 1)).astype(np.float32)
  y = model.apply({"params": {"conv": {"kernel": jnp.asarray(kernel)}}}, x)

  w = kernel[:, 0, 0].astype(np.float64)
  pad = 2
  expected = np.empty(x.shape, np.float64)
  for n in range(x.shape[0]):
    gap = x[n].astype(np.float64).mean(axis=(0, 1))
    for c in range(x.shape[-1]):
      s = sum(w[j] * gap[c + j - pad] for j in range(5) if 0 <= c + j - pad < x.shape[-1])
      expected[n, ..., c] = x[n, ..., c] / (1 + np.exp(-s))
  np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
