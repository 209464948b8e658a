"""2-D max pooling written with strided slices, for a fast gradient on the CPU.

`nn.max_pool` lowers to `reduce_window`, whose gradient XLA computes with
`select_and_scatter`; on the CPU backend that gradient is slow (the stem pool of
ResNet-50 took several times longer than this file's form, itself slower than PyTorch's:
docs/performance.md; with `nn.max_pool`, `benchmarks/profile_step.py` shows it as s32
index fusions). `max_pool`
computes the same values as the maximum over the window's strided slices and routes the
gradient of each output to the *first* maximal element of its window (row-major window
order), exactly what `select_and_scatter` does, so values and gradients equal
`nn.max_pool`'s. The routing is written with masks on stop-gradient values, not a custom
VJP, so forward-mode differentiation still works.

`max_pool_fn(train)` picks the implementation: this one where a gradient is taken
(train mode) on the CPU, `nn.max_pool` otherwise (its forward is faster, and GPU / TPU
handle its gradient well). The CPU choice is made for the platform the step is lowered
for (`lax.platform_dependent`), so a train step exported or AOT-compiled for GPU / TPU
on a CPU-only machine gets the portable `nn.max_pool`.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from fsaf_jax.models.windows import Padding, window_slices


def _pad_value(dtype) -> jnp.ndarray:
  """The padding no window selects: -inf (floats) or the dtype's minimum, as `dtype`."""
  fill = -jnp.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min
  return jnp.asarray(fill).astype(dtype)


def max_pool(
  x: jnp.ndarray,
  window: Sequence[int],
  strides: Sequence[int],
  padding: Padding = ((0, 0), (0, 0)),
) -> jnp.ndarray:
  """Max pooling over H and W of [N, H, W, C], equal to `nn.max_pool` (values and grads).

  Args:
    x: [N, H, W, C].
    window: (wh, ww).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)), filled with -inf (never selected).

  Returns:
    [N, OH, OW, C], OH = (H + top + bottom - wh) // sh + 1 (likewise OW). The gradient
    of each output goes to the first maximal input of its window in row-major order.
  """
  views = window_slices(x, window, strides, padding, _pad_value(x.dtype))
  frozen = [lax.stop_gradient(v) for v in views]
  best = frozen[0]
  for v in frozen[1:]:
    best = jnp.maximum(best, v)
  out = jnp.zeros_like(best)
  taken = jnp.zeros(best.shape, bool)
  for view, value in zip(views, frozen, strict=True):
    first = (value == best) & ~taken  # this view holds the window's first maximum
    taken = taken | first
    out = out + jnp.where(first, view, jnp.zeros_like(view))
  return out


def _border(x: jnp.ndarray, axis: int, size: int) -> jnp.ndarray:
  """A padding band of `x` along `axis`, `size` wide, filled with `_pad_value`."""
  return jnp.broadcast_to(_pad_value(x.dtype), (*x.shape[:axis], size, *x.shape[axis + 1 :]))


def _reduce_window_max_pool(x, window, strides, padding=((0, 0), (0, 0))) -> jnp.ndarray:
  """`nn.max_pool` with this module's argument order (the portable implementation).

  The -inf border is concatenated explicitly and the pool is 'VALID' (what
  `nn.max_pool` does with explicit padding, same values), called with keywords: the form
  ONNX export (`jax2onnx`: its max pool takes only 'SAME' / 'VALID', and its `lax.pad`
  needs a constant batch) converts.
  """
  (pt, pb), (pl, pr) = padding
  if pt or pb or pl or pr:
    for axis, (before, after) in ((1, (pt, pb)), (2, (pl, pr))):
      x = jnp.concatenate([_border(x, axis, before), x, _border(x, axis, after)], axis=axis)
  return nn.max_pool(x, window_shape=tuple(window), strides=tuple(strides), padding="VALID")


def max_pool_fn(train: bool) -> Callable[..., jnp.ndarray]:
  """Max pooling `(x, window, strides, padding) -> y` for a train or inference pass.

  In train mode (a gradient will be taken) the choice is staged out with
  `lax.platform_dependent`, so it is made for the platform the computation is lowered
  for, not the host's: `max_pool` (strided slices) on the CPU, `nn.max_pool`
  (`reduce_window`, whose gradient is `select_and_scatter`) on GPU / TPU, also when a
  CPU-only machine exports or AOT-compiles for them. Inference uses `nn.max_pool`
  everywhere (its forward is faster). Both give identical values and gradients.
  """
  if not train:
    return _reduce_window_max_pool

  def pool(x, window, strides, padding=((0, 0), (0, 0))):
    return lax.platform_dependent(
      x,
      cpu=lambda v: max_pool(v, window, strides, padding),
      default=lambda v: _reduce_window_max_pool(v, window, strides, padding),
    )

  return pool
