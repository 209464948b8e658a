"""1x1 convolution computed as a matrix product, with a conv-shaped (1, 1, Cin, Cout) kernel.

Numerically a bias-free `nn.Conv(features, (1, 1), strides=s)` with PyTorch padding 0,
but lowered to a `dot_general` over the channel axis: XLA then uses its matmul kernels
for both the forward and the weight gradient (on CPU the weight gradient of a 1x1
`conv_general_dilated` runs at a fraction of matmul speed; on GPU/TPU the two forms are
equivalent). The kernel keeps the HWIO conv shape so checkpoints and weight conversion
see an ordinary conv.

The product is taken on the features flattened to a matrix, [N*H*W, Cin] x [Cin, Cout],
not as a 4-D einsum: the gradients are then the plain matrix products
`g @ kernel.T` and `x.T @ g`. With the 4-D einsum, XLA's CPU backend materialised the
incoming gradient a second time in a transposed [Cout, N*H*W] layout (a slow strided
write inside the BatchNorm-backward fusion) for the weight gradient, a much slower 1x1
conv + BN-like backward (docs/performance.md; benchmarks/profile_step.py shows such
fusions by op).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


class Conv1x1(nn.Module):
  """Bias-free 1x1 convolution on [N, H, W, Cin] features.

  Attributes:
    features: output channels.
    strides: spatial stride; keeps rows/columns 0, s, 2s, ... (PyTorch `stride=s`,
      `padding=0`), giving ceil(H/s) x ceil(W/s).
    kernel_init: initialiser of the (1, 1, Cin, features) kernel.
    dtype: compute dtype.
    param_dtype: kernel dtype.
  """

  features: int
  strides: int = 1
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, Cin] -> [N, ceil(H/s), ceil(W/s), features]."""
    kernel = self.param(
      "kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype
    )
    if self.strides != 1:
      x = x[:, :: self.strides, :: self.strides, :]
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = lax.dot_general(x.reshape(-1, x.shape[-1]), kernel[0, 0], (((1,), (0,)), ((), ())))
    return y.reshape(*x.shape[:-1], self.features)
