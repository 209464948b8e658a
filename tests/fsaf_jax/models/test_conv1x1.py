"""Conv1x1 (matmul form) against XLA's convolution with the same kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fsaf_jax.models.conv1x1 import Conv1x1


@pytest.mark.parametrize("strides, hw", [(1, (4, 6)), (2, (4, 6)), (2, (5, 3))])
def test_matches_convolution(strides, hw):
  x = jax.random.normal(jax.random.key(0), (2, *hw, 5))
  model = Conv1x1(7, strides=strides)
  variables = model.init(jax.random.key(1), x)
  kernel = variables["params"]["kernel"]
  assert kernel.shape == (1, 1, 5, 7) and set(variables["params"]) == {"kernel"}
  expected = lax.conv_general_dilated(
    x, kernel, (strides, strides), ((0, 0), (0, 0)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  y = model.apply(variables, x)
  assert y.shape == (2, -(-hw[0] // strides), -(-hw[1] // strides), 7)  # ceil, as PyTorch
  np.testing.assert_allclose(np.asarray(y), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_bf16_compute_keeps_f32_kernel():
  x = jnp.ones((1, 2, 2, 3))
  model = Conv1x1(4, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert model.apply(variables, x).dtype == jnp.bfloat16
