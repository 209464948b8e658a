"""FSAF multi-stage feature fusion: Conv3_x and Conv4_x max-pooled onto Conv5_x's grid.

Conv3_x is max-pooled by H3/H5 (4 with the paper's strides) and Conv4_x by H4/H5 (2;
1 with last stride 1), each with window = stride, then both are concatenated with
Conv5_x along channels (512 + 1024 + 2048 = 3584 for ResNet-50).
"""

import jax.numpy as jnp

from fsaf_jax.core.errors import UserError
from fsaf_jax.models.max_pool import max_pool_fn

FUSIONS = ("concat", "none")


def pool_factor(name: str, feature: jnp.ndarray, target: jnp.ndarray) -> tuple[int, int]:
  """Max-pool window (= stride) taking `feature` [N, H, W, C] onto `target`'s H x W.

  Raises ValueError when the spatial sizes do not divide.
  """
  (h, w), (th, tw) = feature.shape[1:3], target.shape[1:3]
  if h % th or w % tw:
    raise UserError(
      f"model.fusion='concat' cannot pool {name} ({h}x{w}) onto Conv5_x ({th}x{tw}): "
      "the sizes do not divide; choose an input size divisible by the total stride "
      "or set model.fusion='none'"
    )
  return h // th, w // tw


def fuse_features(
  conv3: jnp.ndarray, conv4: jnp.ndarray, conv5: jnp.ndarray, *, train: bool = False
) -> jnp.ndarray:
  """Concatenates max-pooled Conv3_x, max-pooled Conv4_x and Conv5_x.

  Args:
    conv3: [N, H3, W3, C3]; conv4: [N, H4, W4, C4]; conv5: [N, H5, W5, C5].
    train: a gradient will be taken (picks the pooling implementation with the faster
      gradient on CPU, `max_pool.max_pool_fn`; values and gradients are the same).

  Returns:
    [N, H5, W5, C3 + C4 + C5], channels in the order Conv3_x, Conv4_x, Conv5_x.
  """
  pooled = []
  for name, feature in (("Conv3_x", conv3), ("Conv4_x", conv4)):
    window = pool_factor(name, feature, conv5)
    pooled.append(max_pool_fn(train)(feature, window, window))
  return jnp.concatenate([*pooled, conv5], axis=-1)
