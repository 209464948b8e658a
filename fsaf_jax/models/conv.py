"""k x k convolution written as an im2col matrix product where XLA:CPU's convolution is slow.

When a convolution's input (or output) feature map has fewer pixels than its kernel
(ResNet-50's 3x3 convs of Conv4_x / Conv5_x at 4x2 or 2x1, from 64x32 images; Conv5_x
with last stride 2 at 2x1), XLA's algebraic simplifier swaps the convolution's
operands (the feature map becomes the "kernel"); the CPU backend then runs the swapped
convolution, and the input gradient of such convolutions, with a generic loop at 1-5
GFLOP/s, ~100x slower than its matmul kernels (docs/performance.md has the shapes,
timings and a standalone reproduction). `conv_general_dilated` computes the same
convolution there as one matrix product of the im2col patches ([N*OH*OW, kh*kw*Cin] x
[kh*kw*Cin, Cout]): its forward, input gradient (a dot, then pads of the patch
gradient) and weight gradient (a dot) all run on the matmul kernels. Values equal the
convolution's up to float summation order.

Chosen at trace time: the im2col form only on the CPU (`lax.platform_dependent`, so a
step exported or AOT-compiled for GPU / TPU keeps `lax.conv_general_dilated`), only at
those small maps (at larger maps the convolution kernels are faster and im2col
patches would cost kh*kw times the input's memory), and only for a plain convolution
(NHWC / HWIO, no dilation, one group); everything else goes to
`lax.conv_general_dilated` unchanged. Pass it as `nn.Conv(...,
conv_general_dilated=conv_general_dilated)`: the parameters stay those of `nn.Conv`.
"""

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from fsaf_jax.models.windows import Padding, output_size, window_slices

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_as_matmul(
  x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int], padding: Padding, precision=None
) -> jnp.ndarray:
  """Zero-padded convolution of [N, H, W, Cin] by [kh, kw, Cin, Cout] as one matmul.

  Args:
    x: [N, H, W, Cin].
    kernel: [kh, kw, Cin, Cout] (HWIO).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)) zeros.
    precision: `lax.dot_general` precision.

  Returns:
    [N, OH, OW, Cout], `lax.conv_general_dilated(x, kernel, strides, padding,
    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))` up to summation order.
  """
  kh, kw, cin, cout = kernel.shape
  views = window_slices(x, (kh, kw), strides, padding, 0)
  n, oh, ow, _ = views[0].shape
  # Patch channel (i * kw + j) * Cin + c, the order of kernel.reshape(kh * kw * Cin, Cout).
  patches = jnp.concatenate(views, axis=-1).reshape(n * oh * ow, kh * kw * cin)
  y = lax.dot_general(
    patches, kernel.reshape(kh * kw * cin, cout), (((1,), (0,)), ((), ())), precision=precision
  )
  return y.reshape(n, oh, ow, cout)


def is_small_map(
  input_hw: Sequence[int], kernel_hw: Sequence[int], strides: Sequence[int], padding: Padding
) -> bool:
  """Whether the input or the output map has fewer pixels than the kernel window (the
  shapes where XLA swaps the forward or input-gradient convolution's operands)."""
  out_hw = [output_size(*args) for args in zip(input_hw, kernel_hw, strides, padding, strict=True)]
  window = kernel_hw[0] * kernel_hw[1]
  return input_hw[0] * input_hw[1] < window or out_hw[0] * out_hw[1] < window


def conv_general_dilated(
  lhs: jnp.ndarray,
  rhs: jnp.ndarray,
  window_strides: Sequence[int],
  padding: str | Padding,
  lhs_dilation: Sequence[int] | None = None,
  rhs_dilation: Sequence[int] | None = None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision=None,
  preferred_element_type=None,
) -> jnp.ndarray:
  """`lax.conv_general_dilated` (same arguments), in im2col form on the CPU at small maps.

  The im2col form (`conv_as_matmul`) is taken for a 2-D NHWC / HWIO convolution without
  dilation or groups whose input or output map has fewer pixels than the kernel window
  (`is_small_map`), on the CPU only (`lax.platform_dependent`); every other call is
  `lax.conv_general_dilated` itself.
  """

  def portable(x, k):
    return lax.conv_general_dilated(
      x,
      k,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )

  plain = (
    lhs.ndim == 4
    and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    and all(d == 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1))))
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
  )
  if not plain:
    return portable(lhs, rhs)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  padding = tuple(tuple(p) for p in padding)
  if not is_small_map(lhs.shape[1:3], rhs.shape[:2], window_strides, padding):
    return portable(lhs, rhs)
  return lax.platform_dependent(
    lhs,
    rhs,
    cpu=lambda x, k: conv_as_matmul(x, k, window_strides, padding, precision),
    default=portable,
  )
