"""The strided window views of a padded [N, H, W, C] map, one per window offset.

Shared by the CPU forms of max pooling (`max_pool.py`: the maximum over the views) and
of the k x k convolution (`conv.py`: the views concatenated into im2col patches).
"""

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

Padding = Sequence[tuple[int, int]]


def output_size(size: int, window: int, stride: int, pad: tuple[int, int]) -> int:
  """Output length of a window sliding over `size` padded by `pad` = (before, after)."""
  return (size + pad[0] + pad[1] - window) // stride + 1


def window_slices(
  x: jnp.ndarray,
  window: Sequence[int],
  strides: Sequence[int],
  padding: Padding,
  fill: jnp.ndarray | float,
) -> list[jnp.ndarray]:
  """The wh * ww strided views of the padded input, in row-major window order.

  Args:
    x: [N, H, W, C].
    window: (wh, ww).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)), filled with `fill`.
    fill: the padding value (a scalar of x's dtype or castable to it).

  Returns:
    wh * ww arrays [N, OH, OW, C] (OH = `output_size(H, wh, sh, padding[0])`, likewise
    OW); view i * ww + j holds x_padded[:, i + sh * oy, j + sw * ox, :].

  Raises:
    ValueError: if the window does not fit the padded input.
  """
  (wh, ww), (sh, sw) = window, strides
  (pt, pb), (pl, pr) = padding
  n, h, w, c = x.shape
  oh, ow = output_size(h, wh, sh, (pt, pb)), output_size(w, ww, sw, (pl, pr))
  if oh < 1 or ow < 1:
    raise ValueError(f"window {tuple(window)} does not fit a {h}x{w} input")
  if pt or pb or pl or pr:
    fill = jnp.asarray(fill).astype(x.dtype)
    x = lax.pad(x, fill, ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
  return [
    lax.slice(x, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c), (1, sh, sw, 1))
    for i in range(wh)
    for j in range(ww)
  ]
