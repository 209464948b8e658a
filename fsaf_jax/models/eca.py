"""ECA channel attention (Wang et al. 2020, "ECA-Net").

Global average pool, a 1-D convolution of kernel `k` across the channel axis (no
bias), a sigmoid, and a channel-wise rescale of the input. `k` adapts to the channel
count as in the official ECA-Net code.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
  """Kernel size of ECA for `channels`: the odd number nearest |log2(C)/gamma + b/gamma|.

  As the official code: `t = int(|(log2(C) + b) / gamma|)`, `k = t if t is odd else
  t + 1`, and at least 3. E.g. C = 64, 256, 512, 1024, 2048 -> 3, 5, 5, 5, 7.
  """
  if channels < 1:
    raise ValueError(f"ECA needs a positive channel count, got {channels}")
  t = int(abs((math.log2(channels) + b) / gamma))
  k = t if t % 2 else t + 1
  return max(k, 3)


class ECA(nn.Module):
  """Efficient channel attention over the last axis of [N, H, W, C] features.

  The parameter is `conv/kernel` of shape (k, 1, 1) (PyTorch `conv.weight` (1, 1, k)).
  """

  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Returns `x * sigmoid(conv1d(mean_hw(x)))`, shape [N, H, W, C] like `x`."""
    k = eca_kernel_size(x.shape[-1])
    y = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)[..., None]  # [N, C, 1]
    y = nn.Conv(
      features=1,
      kernel_size=(k,),
      padding=(((k - 1) // 2, (k - 1) // 2),),
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="conv",
    )(y.astype(self.dtype))
    gate = nn.sigmoid(y[..., 0].astype(jnp.float32)).astype(x.dtype)  # [N, C]
    return x * gate[:, None, None, :]
