"""BatchNorm and InstanceNorm whose normalisation is one multiply-add per element.

Flax's norm layers apply `(x - mean) * (scale * rsqrt(var + eps)) + bias`. These fold
the statistics and the affine into two per-channel vectors first,

    a = scale * rsqrt(var + eps),   b = bias - mean * a,   y = x * a + b,

so the [N, H, W, C] work is one multiply-add, and the gradient of the train-mode form
(statistics of the batch) needs two per-channel sums, `sum(dy)` and `sum(dy * x)`, and
one more elementwise pass. On the CPU
the train step is markedly faster with them, the extractor about the same
(docs/performance.md; `benchmarks/norm_forms.py` times both forms); on GPU / TPU both
forms are memory-bound elementwise work, fused alike.

Everything else is Flax's: the same variables (params 'scale' / 'bias', batch_stats
'mean' / 'var'), float32 statistics by `E[x^2] - E[x]^2` clipped at 0 (Flax's default
`use_fast_variance`), the same running-average update (`momentum * old + (1 - momentum)
* batch`, skipped while initialising) and the same output dtype, so checkpoints and
converted weights are interchangeable with `nn.BatchNorm` / `nn.InstanceNorm` and
outputs agree up to float rounding (tests/fsaf_jax/models/test_norm.py).
The channel axis is the last one; there is no cross-device `axis_name` (under `jax.jit`
with a sharded batch the statistics are global without it).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def batch_moments(x: jnp.ndarray, axes: Sequence[int]) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Mean and (biased) variance of `x` over `axes`, in at least float32.

  Args:
    x: an array of any float dtype.
    axes: the reduced axes.

  Returns:
    (mean, var), each of `x`'s shape without `axes`; var = E[x^2] - E[x]^2 clipped at 0.
  """
  x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(x, axes)
  mean_sq = jnp.mean(jnp.square(x), axes)
  return mean, jnp.maximum(mean_sq - jnp.square(mean), 0.0)


def normalize(
  x: jnp.ndarray,
  mean: jnp.ndarray,
  var: jnp.ndarray,
  scale: jnp.ndarray | None,
  bias: jnp.ndarray | None,
  epsilon: float,
) -> jnp.ndarray:
  """`(x - mean) / sqrt(var + eps) * scale + bias` as one multiply-add `x * a + b`.

  Args:
    x: [..., C] inputs.
    mean, var: statistics broadcastable to `x` ([C] or [N, 1, 1, C]).
    scale, bias: [C] affine parameters, or None for 1 / 0.
    epsilon: added to the variance.

  Returns:
    `x`'s shape, in the promoted dtype of `x` and the statistics (float32 for
    bfloat16 inputs; the caller casts).
  """
  a = jax.lax.rsqrt(var + epsilon)
  if scale is not None:
    a = a * scale
  b = -mean * a
  if bias is not None:
    b = b + bias
  return x * a + b


def _output_dtype(dtype: Any, *arrays: Any) -> Any:
  return dtype if dtype is not None else jnp.result_type(*(a for a in arrays if a is not None))


def _norm_variables(
  mdl: nn.Module,
  features: int,
  batch_mean: jnp.ndarray | None,
  batch_var: jnp.ndarray | None,
  *,
  use_running_average: bool = False,
  momentum: float | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray | None, jnp.ndarray | None]:
  """Declares a norm layer's variables on `mdl` and picks the statistics to use.

  Params 'scale' / 'bias' ([features], when `mdl.use_scale` / `mdl.use_bias`) from
  `mdl.scale_init` / `mdl.bias_init` in `mdl.param_dtype`; with a `momentum`, also the
  float32 running averages 'mean' (zeros) / 'var' (ones) in 'batch_stats', moved
  towards the batch statistics (`momentum * old + (1 - momentum) * batch`) unless
  `use_running_average` or initialising.

  Args:
    mdl: the norm module (with `use_scale`, `use_bias`, `scale_init`, `bias_init`,
      `param_dtype`), inside its compact method.
    features: channels.
    batch_mean, batch_var: statistics of the batch (any shape ending in [features]);
      unused (may be None) with `use_running_average`.
    use_running_average: normalise with the running averages instead.
    momentum: running-average decay; None: no running averages (InstanceNorm).

  Returns:
    (mean, var, scale, bias): the statistics to normalise with, scale / bias or None.
  """
  shape = (features,)
  scale = mdl.param("scale", mdl.scale_init, shape, mdl.param_dtype) if mdl.use_scale else None
  bias = mdl.param("bias", mdl.bias_init, shape, mdl.param_dtype) if mdl.use_bias else None
  if momentum is None:
    return batch_mean, batch_var, scale, bias
  ra_mean = mdl.variable("batch_stats", "mean", jnp.zeros, shape, jnp.float32)
  ra_var = mdl.variable("batch_stats", "var", jnp.ones, shape, jnp.float32)
  if use_running_average:
    return ra_mean.value, ra_var.value, scale, bias
  if not mdl.is_initializing():
    ra_mean.value = momentum * ra_mean.value + (1 - momentum) * batch_mean
    ra_var.value = momentum * ra_var.value + (1 - momentum) * batch_var
  return batch_mean, batch_var, scale, bias


class _Norm(nn.Module):
  """Fields shared by the norm layers.

  Attributes:
    epsilon: added to the variance.
    use_bias, use_scale: learn the shift / the scale ('bias' / 'scale' params).
    scale_init, bias_init: their initialisers.
    dtype: output dtype (None: that of the input and params); statistics are float32.
    param_dtype: dtype of 'scale' and 'bias'.
  """

  epsilon: float = 1e-5
  use_bias: bool = True
  use_scale: bool = True
  scale_init: Any = nn.initializers.ones
  bias_init: Any = nn.initializers.zeros
  dtype: Any = None
  param_dtype: Any = jnp.float32


class BatchNorm(_Norm):
  """BatchNorm over every axis but the last (channels); drop-in for `nn.BatchNorm`.

  Attributes (and those of `_Norm`; epsilon 1e-5 as Flax's):
    use_running_average: True: normalise with the running averages (eval); False:
      with the batch statistics, and update the running averages (collection
      'batch_stats', when it is mutable and not initialising). May instead be given to
      `__call__`.
    momentum: running-average decay (Flax convention: 0.9 = PyTorch's 0.1).
  """

  use_running_average: bool | None = None
  momentum: float = 0.99

  @nn.compact
  def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None) -> jnp.ndarray:
    """[..., C] -> [..., C] normalised."""
    use_running_average = nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    moments = (None, None) if use_running_average else batch_moments(x, tuple(range(x.ndim - 1)))
    mean, var, scale, bias = _norm_variables(
      self, x.shape[-1], *moments, use_running_average=use_running_average, momentum=self.momentum
    )
    y = normalize(x, mean, var, scale, bias, self.epsilon)
    return y.astype(_output_dtype(self.dtype, x, scale, bias))


class InstanceNorm(_Norm):
  """Per-sample, per-channel normalisation over the spatial axes of [N, ..., C];
  drop-in for `nn.InstanceNorm` (no running statistics). Attributes: `_Norm`'s
  (epsilon 1e-6 as Flax's).
  """

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, ..., C] -> [N, ..., C] normalised."""
    spatial = tuple(range(1, x.ndim - 1))
    mean, var = (jnp.expand_dims(m, spatial) for m in batch_moments(x, spatial))
    mean, var, scale, bias = _norm_variables(self, x.shape[-1], mean, var)
    y = normalize(x, mean, var, scale, bias, self.epsilon)
    return y.astype(_output_dtype(self.dtype, x, scale, bias))
