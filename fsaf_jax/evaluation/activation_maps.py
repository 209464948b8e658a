"""Activation maps, torchreid's method (`tools/visualize_actmap.py`).

  maps_fn = make_activation_maps(model, image_size=(256, 128))
  maps = maps_fn(variables, images)    # float32 [B, H, W] in [0, 1]
  overlay(images, maps)                # uint8 [B, H, W, 3], the heat map on the image

For each image: the network's last feature map (`'conv5'` of the model's output dict),
its channel-wise squared L2 norm [h, w], L2-normalised over the positions, upsampled
(bilinear) to the input size and scaled to [0, 1] (min to max); the overlay is
0.6 x image + 0.4 x the 'jet' colouring of the map, as torchreid draws it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps

from fsaf_jax.models.preprocessing import normalize_images

FEATURE_MAP = "conv5"
IMAGE_WEIGHT = 0.6  # torchreid: overlapped = img * 0.6 + am * 0.4


def activation_maps(feature_map: jax.Array, size: tuple[int, int]) -> jax.Array:
  """torchreid's activation maps of a batch of feature maps.

  Args:
    feature_map: [B, h, w, C].
    size: (H, W) of the images.

  Returns:
    float32 [B, H, W], each map scaled to [0, 1].
  """
  energy = jnp.sum(jnp.square(feature_map.astype(jnp.float32)), axis=-1)  # [B, h, w]
  b, h, w = energy.shape
  flat = energy.reshape(b, h * w)
  flat = flat / jnp.maximum(jnp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
  up = jax.image.resize(flat.reshape(b, h, w), (b, *size), method="bilinear")
  low = up.min(axis=(1, 2), keepdims=True)
  high = up.max(axis=(1, 2), keepdims=True)
  return (up - low) / (high - low + 1e-12)


def make_activation_maps(
  model: nn.Module, *, image_size: tuple[int, int], feature: str = FEATURE_MAP
) -> Callable[[Any, np.ndarray], np.ndarray]:
  """Jitted `fn(variables, images uint8 [B, H, W, 3]) -> float32 [B, H, W]` maps.

  Raises (when called):
    KeyError: the model's output dict has no `feature`.
  """
  size = (int(image_size[0]), int(image_size[1]))
  compute_dtype = jnp.dtype(getattr(model, "dtype", None) or jnp.float32)

  @jax.jit
  def maps(variables, images):
    out = model.apply(variables, normalize_images(images, compute_dtype), train=False)
    if feature not in out:
      raise KeyError(f"model output has no {feature!r}; keys: {sorted(out)}")
    return activation_maps(out[feature], size)

  def fn(variables, images):
    variables = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    return np.asarray(jax.device_get(maps(variables, np.asarray(images))))

  return fn


def overlay(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
  """uint8 [B, H, W, 3]: `IMAGE_WEIGHT` x images + the rest x jet(maps)."""
  heat = colormaps["jet"](np.clip(maps, 0.0, 1.0))[..., :3] * 255.0
  mixed = IMAGE_WEIGHT * images.astype(np.float32) + (1.0 - IMAGE_WEIGHT) * heat
  return np.clip(np.round(mixed), 0, 255).astype(np.uint8)
