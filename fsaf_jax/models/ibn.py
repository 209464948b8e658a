"""IBN-a normalisation (Pan et al. 2018): InstanceNorm on part of the channels.

Mirrors `IBN` of the official IBN-Net code (`ibnnet/modules.py`): the first
`int(planes * ratio)` channels go through an affine InstanceNorm (no running stats),
the rest through BatchNorm. Sub-module names `IN` and `BN` match the PyTorch keys
`bn1.IN.*` and `bn1.BN.*`, so weight conversion is a table.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fsaf_jax.models.norm import BatchNorm, InstanceNorm


class IBN(nn.Module):
  """Instance-Batch normalisation over the last (channel) axis.

  Same call convention as `BatchNorm`, so the two are interchangeable as a
  bottleneck's `bn1`.

  Attributes:
    use_running_average: False: BatchNorm uses batch statistics and updates its
      running averages (collection `batch_stats`); True: it uses the running averages.
      The InstanceNorm part always uses per-instance statistics. May instead be given
      to `__call__`.
    ratio: fraction of channels normalised per instance; `int(C * ratio)` of them.
    momentum: BatchNorm running-average momentum (Flax convention: 0.9 = PyTorch 0.1).
    epsilon: added to the variance of both norms.
    dtype: compute dtype (statistics are always at least float32).
    param_dtype: dtype of the affine parameters.
  """

  use_running_average: bool | None = None
  ratio: float = 0.5
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None) -> jnp.ndarray:
    """Normalises `x`.

    Args:
      x: [N, H, W, C] features.
      use_running_average: overrides the attribute of the same name.

    Returns:
      [N, H, W, C] normalised features, channels in the input order.
    """
    use_running_average = nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    channels = x.shape[-1]
    half = int(channels * self.ratio)
    if not 0 < half < channels:
      raise ValueError(
        f"IBN ratio={self.ratio} leaves no channel for one of the two norms "
        f"(C={channels}, instance-normalised channels={half})"
      )
    x_in = InstanceNorm(
      epsilon=self.epsilon, dtype=self.dtype, param_dtype=self.param_dtype, name="IN"
    )(x[..., :half])
    x_bn = BatchNorm(
      use_running_average=use_running_average,
      momentum=self.momentum,
      epsilon=self.epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="BN",
    )(x[..., half:])
    return jnp.concatenate([x_in, x_bn], axis=-1)
