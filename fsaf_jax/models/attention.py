"""BoTNet multi-head self-attention (Srinivas et al. 2021) over a 2-D feature map.

Replaces the 3x3 convolution of a bottleneck: bias-free 1x1 query/key/value
projections, `num_heads` heads of width `d`, and content-plus-position logits

  logits[i, j] = q_i . k_j + q_i . rel_h[j_y - i_y + H - 1] + q_i . rel_w[j_x - i_x + W - 1]

with `q` already scaled by 1/sqrt(d) (as BoTNet), for query position i = (i_y, i_x)
and key position j = (j_y, j_x) of the H x W grid. `rel_h` (2H-1, d) and `rel_w`
(2W-1, d) are learned and shared by the heads; they are sized from the feature map
the block sees, so they follow the input size and `last_stride`. Softmax runs over
all H*W keys in float32, then a 2x2 average pool follows where the block has stride 2.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines.errors import UserError
from fsaf_jax.models.conv1x1 import Conv1x1


def relative_index(size: int) -> np.ndarray:
  """Table row of each (query, key) pair along one axis.

  Returns:
    int32 [size, size] with `[i, j] = j - i + size - 1`, in 0..2*size-2.
  """
  pos = np.arange(size)
  return (pos[None, :] - pos[:, None] + size - 1).astype(np.int32)


def relative_logits(q: jnp.ndarray, rel_h: jnp.ndarray, rel_w: jnp.ndarray) -> jnp.ndarray:
  """2-D relative-position logits.

  Args:
    q: queries [N, heads, H, W, d].
    rel_h: [2H-1, d]; row `j_y - i_y + H - 1` embeds a vertical offset j_y - i_y.
    rel_w: [2W-1, d]; row `j_x - i_x + W - 1` embeds a horizontal offset j_x - i_x.

  Returns:
    [N, heads, H, W, H, W]: entry [n, h, i_y, i_x, j_y, j_x] is
    `q[n, h, i_y, i_x] . (rel_h[j_y - i_y + H - 1] + rel_w[j_x - i_x + W - 1])`.
  """
  height, width = q.shape[2], q.shape[3]
  if rel_h.shape[0] != 2 * height - 1 or rel_w.shape[0] != 2 * width - 1:
    raise ValueError(
      f"relative tables {rel_h.shape} / {rel_w.shape} do not fit a {height}x{width} map "
      f"(need ({2 * height - 1}, d) / ({2 * width - 1}, d))"
    )
  emb_h = rel_h[relative_index(height)]  # [H(i_y), H(j_y), d]
  emb_w = rel_w[relative_index(width)]  # [W(i_x), W(j_x), d]
  logits_h = jnp.einsum("nhyxd,ykd->nhyxk", q, emb_h.astype(q.dtype))
  logits_w = jnp.einsum("nhyxd,xld->nhyxl", q, emb_w.astype(q.dtype))
  return logits_h[..., :, None] + logits_w[..., None, :]


class MHSA(nn.Module):
  """BoTNet multi-head self-attention block on [N, H, W, C] features.

  Parameters (names match the weight-conversion contract): `query/kernel`,
  `key/kernel`, `value/kernel` of shape (1, 1, C, features), `rel_h` (2H-1, d) and
  `rel_w` (2W-1, d) with d = features / num_heads. The attention weights
  [N, heads, H*W, H*W] are sown into the `intermediates` collection as
  `attention_weights` (apply with `mutable=['intermediates']` to read them).

  Attributes:
    features: output channels (the bottleneck width); divisible by `num_heads`.
    num_heads: attention heads.
    strides: 1, or 2 for a 2x2 average pool after the attention.
    dtype: compute dtype (the softmax always runs in float32).
    param_dtype: parameter dtype.
  """

  features: int
  num_heads: int = 4
  strides: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Attends over the H x W grid of `x` [N, H, W, C]; returns [N, H/s, W/s, features]."""
    if self.features % self.num_heads:
      raise ValueError(f"MHSA width {self.features} is not divisible by num_heads={self.num_heads}")
    if self.strides not in (1, 2):
      raise ValueError(f"MHSA strides must be 1 or 2, got {self.strides}")
    n, height, width, _ = x.shape
    if self.strides == 2 and (height % 2 or width % 2):
      raise UserError(
        f"a stride-2 MHSA block needs an even feature map, got {height}x{width}: "
        "choose an input size divisible by the network's total stride"
      )
    heads, d = self.num_heads, self.features // self.num_heads
    proj = lambda name: Conv1x1(
      self.features,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
      name=name,
    )
    split = lambda t: t.reshape(n, height, width, heads, d).transpose(0, 3, 1, 2, 4)
    q = split(proj("query")(x)) * jnp.asarray(d**-0.5, self.dtype)  # [N, h, H, W, d]
    k = split(proj("key")(x))
    v = split(proj("value")(x))
    rel_init = nn.initializers.normal(stddev=d**-0.5)
    rel_h = self.param("rel_h", rel_init, (2 * height - 1, d), self.param_dtype)
    rel_w = self.param("rel_w", rel_init, (2 * width - 1, d), self.param_dtype)

    content = jnp.einsum("nhyxd,nhkld->nhyxkl", q, k)
    logits = content + relative_logits(q, rel_h.astype(self.dtype), rel_w.astype(self.dtype))
    logits = logits.reshape(n, heads, height * width, height * width)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    self.sow("intermediates", "attention_weights", weights)
    v = v.reshape(n, heads, height * width, d)
    out = jnp.einsum("nhqk,nhkd->nhqd", weights.astype(self.dtype), v)
    out = out.reshape(n, heads, height, width, d).transpose(0, 2, 3, 1, 4)
    out = out.reshape(n, height, width, self.features)
    if self.strides == 2:
      out = nn.avg_pool(out, window_shape=(2, 2), strides=(2, 2))
    return out
