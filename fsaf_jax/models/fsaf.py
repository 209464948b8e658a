"""The FSAF network and its construction from a config.

FSAF (An et al.) = ResNet50-IBN-a backbone + BoTNet MHSA in Conv4_x/Conv5_x + ECA
+ Conv3-5 fusion + BNNeck head. The paper's ablation variants
(Table 2) are configs, not code forks: `baseline` (no MHSA, no ECA, no fusion),
`baseline_sam` (+ MHSA + ECA), `full` (+ fusion).

  model = create_model(config.model, num_classes=751)
  variables = model.init(rng, images, train=False)   # {'params', 'batch_stats'}
  out, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from fsaf_jax.models.backbone import Backbone, validate_backbone_args
from fsaf_jax.models.fusion import FUSIONS, fuse_features
from fsaf_jax.models.head import BNNeckHead
from fsaf_jax.models.pooling import POOLINGS

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class FSAF(nn.Module):
  """FSAF person re-identification network.

  Attributes:
    num_classes: training identities (classifier outputs).
    stage_sizes, stem_width, widths, ibn_stages, mhsa_stages, num_heads,
      last_stride, eca_placement: see `Backbone`.
    fusion: 'concat' (Conv3_x/Conv4_x max-pooled onto Conv5_x's grid and
      concatenated) or 'none' (the head sees Conv5_x).
    pooling: 'avg' or 'gem'.
    gem_p: GeM exponent.
    dtype: compute dtype of the backbone (the head runs in float32).
    param_dtype: parameter dtype.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  stem_width: int = 64
  widths: Sequence[int] = (64, 128, 256, 512)
  ibn_stages: Sequence[int] = (2, 3, 4)
  mhsa_stages: Sequence[int] = (4, 5)
  num_heads: int = 4
  last_stride: int = 2
  eca_placement: str = "stage"
  fusion: str = "concat"
  pooling: str = "avg"
  gem_p: float = 3.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """Runs the network.

    Args:
      x: normalised RGB images [N, H, W, 3] (see `fsaf_jax.models.preprocessing`).
      train: BatchNorm uses batch statistics and updates `batch_stats` (apply with
        `mutable=['batch_stats']`); False: running averages.

    Returns:
      dict with the backbone stage outputs 'stem', 'conv2', 'conv3', 'conv4', 'conv5'
      (NHWC, compute dtype); 'fused' [N, H5, W5, C] (the map the head pools: the
      concatenation, or Conv5_x when fusion='none'); float32 'feat' [N, C] (pooled,
      pre-BN: triplet loss), 'bn_feat' [N, C] (post-BNNeck: the test-time embedding
      before L2 normalisation) and 'logits' [N, num_classes].
    """
    if self.num_classes < 1:
      raise ValueError(f"model.num_classes={self.num_classes!r}: must be positive")
    if self.fusion not in FUSIONS:
      raise ValueError(f"model.fusion={self.fusion!r}: must be one of {FUSIONS}")
    outputs = Backbone(
      stage_sizes=self.stage_sizes,
      stem_width=self.stem_width,
      widths=self.widths,
      ibn_stages=self.ibn_stages,
      mhsa_stages=self.mhsa_stages,
      num_heads=self.num_heads,
      last_stride=self.last_stride,
      eca_placement=self.eca_placement,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="backbone",
    )(x, train=train)
    if self.fusion == "concat":
      fused = fuse_features(outputs["conv3"], outputs["conv4"], outputs["conv5"], train=train)
    else:
      fused = outputs["conv5"]
    outputs["fused"] = fused
    outputs.update(
      BNNeckHead(
        num_classes=self.num_classes,
        pooling=self.pooling,
        gem_p=self.gem_p,
        param_dtype=self.param_dtype,
        name="head",
      )(fused, train=train)
    )
    return outputs


# The paper's model: ResNet50-IBN-a + MHSA (Conv4_x, Conv5_x) + ECA + fusion.
FSAF_R50 = functools.partial(
  FSAF,
  stage_sizes=(3, 4, 6, 3),
  stem_width=64,
  widths=(64, 128, 256, 512),
  ibn_stages=(2, 3, 4),
  mhsa_stages=(4, 5),
  num_heads=4,
  last_stride=2,
  eca_placement="stage",
  fusion="concat",
)

# Same code and options, small widths: tests and the CPU demo (input 64x32).
FSAF_Tiny = functools.partial(
  FSAF_R50, stage_sizes=(2, 2, 2, 2), stem_width=8, widths=(8, 16, 32, 64), num_heads=2
)


def parse_dtype(name: str) -> Any:
  """'float32' | 'bfloat16' -> the jnp dtype; ValueError naming `model.dtype` otherwise."""
  if name not in DTYPES:
    raise ValueError(f"model.dtype={name!r}: must be one of {tuple(DTYPES)}")
  return DTYPES[name]


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> FSAF:
  """Builds the FSAF module described by `config.model`.

  Args:
    model_config: the `model` section of a config (fields of `configs/base.py`).
    num_classes: training identities of the dataset. `model_config.num_classes` is -1
      (take this value) or must equal it.

  Returns:
    An unbound `FSAF` module (parameters in float32, compute in `model.dtype`).

  Raises:
    ValueError: a field has an unsupported value (the message names it).
  """
  mc = model_config
  if mc.num_classes not in (-1, num_classes):
    raise ValueError(
      f"model.num_classes={mc.num_classes} but the dataset has {num_classes} training "
      "identities: set model.num_classes=-1 (take it from the dataset) or fix it"
    )
  validate_backbone_args(
    stage_sizes=tuple(mc.stage_sizes),
    stem_width=mc.stem_width,
    widths=tuple(mc.widths),
    ibn_stages=tuple(mc.ibn_stages),
    mhsa_stages=tuple(mc.mhsa_stages),
    num_heads=mc.num_heads,
    last_stride=mc.last_stride,
    eca_placement=mc.eca_placement,
  )
  if mc.fusion not in FUSIONS:
    raise ValueError(f"model.fusion={mc.fusion!r}: must be one of {FUSIONS}")
  if mc.pooling not in POOLINGS:
    raise ValueError(f"model.pooling={mc.pooling!r}: must be one of {POOLINGS}")
  if mc.pooling == "gem" and mc.gem_p <= 0:
    raise ValueError(f"model.gem_p={mc.gem_p!r}: the GeM exponent must be positive")
  if num_classes < 1:
    raise ValueError(f"num_classes={num_classes!r}: must be positive")
  return FSAF(
    num_classes=num_classes,
    stage_sizes=tuple(mc.stage_sizes),
    stem_width=mc.stem_width,
    widths=tuple(mc.widths),
    ibn_stages=tuple(mc.ibn_stages),
    mhsa_stages=tuple(mc.mhsa_stages),
    num_heads=mc.num_heads,
    last_stride=mc.last_stride,
    eca_placement=mc.eca_placement,
    fusion=mc.fusion,
    pooling=mc.pooling,
    gem_p=float(mc.gem_p),
    dtype=parse_dtype(mc.dtype),
    param_dtype=jnp.float32,
  )
