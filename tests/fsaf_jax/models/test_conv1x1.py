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


@pytest.mark.parametrize("strides", [1, 2])
def test_gradients_match_convolution_and_bf16_within_tolerance(strides):
  """Input and kernel gradients of the matmul form equal the conv's (float32); the
  bfloat16 compute path is within 2e-2 relative (bf16 has an 8-bit mantissa: ~4e-3 per
  rounding, the products and the sum over Cin = 24 add a few)."""
  x = jax.random.normal(jax.random.key(0), (2, 6, 4, 24))
  g = jax.random.normal(jax.random.key(2), (2, 6 // strides, 4 // strides, 16))
  model = Conv1x1(16, strides=strides)
  variables = model.init(jax.random.key(1), x)

  def conv(x, kernel):
    return lax.conv_general_dilated(
      x, kernel, (strides, strides), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  ours = jax.vjp(lambda x, v: model.apply(v, x), x, variables)[1](g)
  ref = jax.vjp(conv, x, variables["params"]["kernel"])[1](g)
  np.testing.assert_allclose(ours[0], ref[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[1]["params"]["kernel"], ref[1], rtol=1e-5, atol=1e-4)

  bf16 = Conv1x1(16, strides=strides, dtype=jnp.bfloat16)
  y16, vjp16 = jax.vjp(lambda x, v: bf16.apply(v, x), x, variables)
  dx16, dv16 = vjp16(g.astype(jnp.bfloat16))
  y32 = model.apply(variables, x)
  for got, want in ((y16, y32), (dx16, ours[0]), (dv16["params"]["kernel"], ref[1])):
    got, want = np.asarray(got, np.float32), np.asarray(want)
    assert np.linalg.norm(got - want) <= 2e-2 * np.linalg.norm(want)
