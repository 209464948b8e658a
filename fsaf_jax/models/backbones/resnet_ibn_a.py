"""The 'resnet_ibn_a' backbone: ResNet-IBN-a with BoTNet MHSA and ECA options
(`fsaf_jax.models.backbone.Backbone`), configured by `config.model`'s `stage_sizes`,
`stem_width`, `widths`, `ibn_stages`, `mhsa_stages`, `num_heads`, `last_stride` and
`eca_placement`."""

from typing import Any

import jax.numpy as jnp
import ml_collections

from fsaf_jax.models.backbone import Backbone
from fsaf_jax.models.plugin import register_backbone


@register_backbone("resnet_ibn_a")
def build(model_config: ml_collections.ConfigDict, dtype: Any) -> Backbone:
  """The unbound `Backbone` of `model_config` (float32 parameters, compute in `dtype`);
  ValueError naming the first unsupported field."""
  mc = model_config
  return Backbone(
    stage_sizes=tuple(mc.stage_sizes),
    stem_width=mc.stem_width,
    widths=tuple(mc.widths),
    ibn_stages=tuple(mc.ibn_stages),
    mhsa_stages=tuple(mc.mhsa_stages),
    num_heads=mc.num_heads,
    last_stride=mc.last_stride,
    eca_placement=mc.eca_placement,
    dtype=dtype,
    param_dtype=jnp.float32,
  )
