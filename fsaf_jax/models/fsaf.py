"""The FSAF network: a backbone, the Conv3-5 fusion and the BNNeck head.

FSAF (An et al.) = ResNet50-IBN-a backbone + BoTNet MHSA in Conv4_x/Conv5_x + ECA
+ Conv3-5 fusion + BNNeck head. The paper's ablation variants
(Table 2) are configs, not code forks: `baseline` (no MHSA, no ECA, no fusion),
`baseline_sam` (+ MHSA + ECA), `full` (+ fusion). The backbone is any registered one
(`config.model.backbone`, `fsaf_jax.models.registry`).

  model = registry.create_model(config.model, num_classes=751)
  variables = model.init(rng, images, train=False)   # {'params', 'batch_stats'}
  out, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from fsaf_jax.core.errors import UserError
from fsaf_jax.models.fusion import FUSIONS, fuse_features
from fsaf_jax.models.head import BNNeckHead


class FSAF(nn.Module):
  """FSAF person re-identification network.

  Attributes:
    backbone: unbound module mapping images to a dict of feature maps with 'conv5'
      (and 'conv3', 'conv4' for fusion='concat'); its variables live under
      'backbone'.
    head: unbound `BNNeckHead` (variables under 'head').
    fusion: 'concat' (Conv3_x/Conv4_x max-pooled onto Conv5_x's grid and
      concatenated) or 'none' (the head sees Conv5_x).
    dtype: compute dtype of the backbone (the head runs in float32). None (the
      default): the backbone's own `dtype`, filled in at construction; another value
      rebuilds the backbone with it, so `model.clone(dtype=...)` changes the compute
      dtype of the whole network.
  """

  backbone: nn.Module
  head: nn.Module
  fusion: str = "concat"
  dtype: Any = None

  def __post_init__(self):
    """Raises ValueError naming `model.fusion` if unsupported; resolves `dtype`."""
    if self.fusion not in FUSIONS:
      raise UserError(f"model.fusion={self.fusion!r}: must be one of {FUSIONS}")
    backbone_dtype = getattr(self.backbone, "dtype", jnp.float32)
    # Dataclass fields are read-only once built; this is still construction.
    if self.dtype is None:
      object.__setattr__(self, "dtype", backbone_dtype)
    elif jnp.dtype(self.dtype) != jnp.dtype(backbone_dtype):
      object.__setattr__(self, "backbone", self.backbone.clone(dtype=self.dtype))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """Runs the network.

    Args:
      x: normalised RGB images [N, H, W, 3] (see `fsaf_jax.models.preprocessing`).
      train: BatchNorm uses batch statistics and updates `batch_stats` (apply with
        `mutable=['batch_stats']`); False: running averages.

    Returns:
      dict with the backbone's outputs (ResNet-IBN-a: 'stem', 'conv2', 'conv3',
      'conv4', 'conv5', NHWC, compute dtype); 'fused' [N, H5, W5, C] (the map the
      head pools: the concatenation, or Conv5_x when fusion='none'); float32 'feat'
      [N, C] (pooled, pre-BN: triplet loss), 'bn_feat' [N, C] (post-BNNeck: the
      test-time embedding before L2 normalisation) and 'logits' [N, num_classes].
    """
    outputs = dict(self.backbone(x, train=train))
    if self.fusion == "concat":
      fused = fuse_features(outputs["conv3"], outputs["conv4"], outputs["conv5"], train=train)
    else:
      fused = outputs["conv5"]
    outputs["fused"] = fused
    outputs.update(self.head(fused, train=train))
    return outputs


def build_fsaf(
  model_config: ml_collections.ConfigDict, num_classes: int, backbone: nn.Module
) -> FSAF:
  """The 'fsaf' model of the registry: `backbone` + `model.fusion` + BNNeck head
  (`model.pooling`, `model.gem_p`) with `num_classes` outputs, float32 parameters.

  Raises:
    ValueError: a field has an unsupported value (the message names it).
  """
  head = BNNeckHead(
    num_classes=num_classes,
    pooling=model_config.pooling,
    gem_p=float(model_config.gem_p),
    param_dtype=jnp.float32,
  )
  return FSAF(backbone=backbone, head=head, fusion=model_config.fusion)
