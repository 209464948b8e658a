"""ResNet-IBN-a backbone with BoTNet MHSA and ECA options (FSAF Conv1_x..Conv5_x).

Mirrors the official IBN-Net `resnet50_ibn_a` (stem `conv1`/`bn1`, stages
`layer1`..`layer4` = Conv2_x..Conv5_x), so that PyTorch keys map to Flax paths by a
table: `layer{s}.{i}.X` -> `layer{s}_{i}/X`.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fsaf_jax.core.errors import UserError
from fsaf_jax.models.bottleneck import Bottleneck, conv_kernel_init
from fsaf_jax.models.eca import ECA
from fsaf_jax.models.max_pool import max_pool_fn
from fsaf_jax.models.norm import BatchNorm

ECA_PLACEMENTS = ("stage", "block", "none")
STAGES = (2, 3, 4, 5)  # Conv{n}_x built from bottlenecks
STAGE_KEYS = ("conv2", "conv3", "conv4", "conv5")


class Backbone(nn.Module):
  """ResNet-IBN-a with optional MHSA and ECA.

  Attributes:
    stage_sizes: bottlenecks in Conv2_x..Conv5_x (ResNet-50: (3, 4, 6, 3)).
    stem_width: channels of the 7x7 stem conv.
    widths: bottleneck widths of Conv2_x..Conv5_x; stage outputs are 4x these.
    ibn_stages: stages (2..5) whose bottlenecks use IBN-a in `bn1`.
    mhsa_stages: stages (2..5) whose 3x3 convs are BoTNet MHSA.
    num_heads: MHSA heads.
    last_stride: stride of Conv5_x (1 or 2).
    eca_placement: 'stage' (ECA after the stem and each stage output, modules
      `eca_stem`, `eca_layer1`..`eca_layer4`), 'block' (inside each bottleneck before
      the residual add, `layer{s}_{i}/eca`) or 'none'.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  stem_width: int = 64
  widths: Sequence[int] = (64, 128, 256, 512)
  ibn_stages: Sequence[int] = (2, 3, 4)
  mhsa_stages: Sequence[int] = (4, 5)
  num_heads: int = 4
  last_stride: int = 2
  eca_placement: str = "stage"
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    """Raises ValueError naming the `config.model` field and value of any unsupported
    setting (the one place the settings are checked)."""
    if len(self.stage_sizes) != 4 or any(int(n) < 1 for n in self.stage_sizes):
      raise UserError(
        f"model.stage_sizes={tuple(self.stage_sizes)!r}: need 4 positive block counts "
        "(Conv2_x..Conv5_x)"
      )
    if len(self.widths) != 4 or any(int(w) < 1 for w in self.widths):
      raise UserError(f"model.widths={tuple(self.widths)!r}: need 4 positive bottleneck widths")
    if self.stem_width < 1:
      raise UserError(f"model.stem_width={self.stem_width!r}: must be positive")
    for field, stages in (("ibn_stages", self.ibn_stages), ("mhsa_stages", self.mhsa_stages)):
      bad = [s for s in stages if s not in STAGES]
      if bad:
        raise UserError(
          f"model.{field}={tuple(stages)!r}: stage(s) {bad} do not exist; "
          f"choose among {STAGES} (Conv2_x..Conv5_x)"
        )
    if self.num_heads < 1:
      raise UserError(f"model.num_heads={self.num_heads!r}: must be positive")
    for stage in self.mhsa_stages:
      width = self.widths[STAGES.index(stage)]
      if width % self.num_heads:
        raise UserError(
          f"model.num_heads={self.num_heads} does not divide the Conv{stage}_x width {width} "
          f"(model.widths={tuple(self.widths)!r}) of an MHSA stage"
        )
    if self.last_stride not in (1, 2):
      raise UserError(f"model.last_stride={self.last_stride!r}: must be 1 or 2")
    if self.eca_placement not in ECA_PLACEMENTS:
      raise UserError(
        f"model.eca_placement={self.eca_placement!r}: must be one of {ECA_PLACEMENTS}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """Runs the backbone.

    Args:
      x: normalised images [N, H, W, 3].
      train: BatchNorm uses batch statistics and updates its running averages.

    Returns:
      dict of stage outputs in the compute dtype: 'stem' [N, H/4, W/4, stem_width],
      'conv2' [N, H/4, W/4, 4 w0], 'conv3' [N, H/8, W/8, 4 w1], 'conv4'
      [N, H/16, W/16, 4 w2], 'conv5' [N, H/(16 last_stride), W/(16 last_stride), 4 w3].
    """
    eca = functools.partial(ECA, dtype=self.dtype, param_dtype=self.param_dtype)
    x = x.astype(self.dtype)
    x = nn.Conv(
      self.stem_width,
      (7, 7),
      strides=(2, 2),
      padding=((3, 3), (3, 3)),
      use_bias=False,
      kernel_init=conv_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="conv1",
    )(x)
    x = BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="bn1",
    )(x)
    x = nn.relu(x)
    # Same values and gradients as nn.max_pool; a faster gradient on CPU (max_pool.py).
    x = max_pool_fn(train)(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    if self.eca_placement == "stage":
      x = eca(name="eca_stem")(x)
    outputs = {"stem": x}

    strides = (1, 2, 2, self.last_stride)
    for s, (stage, num_blocks) in enumerate(zip(STAGES, self.stage_sizes, strict=True)):
      for i in range(num_blocks):
        x = Bottleneck(
          planes=self.widths[s],
          strides=strides[s] if i == 0 else 1,
          use_ibn=stage in self.ibn_stages,
          use_mhsa=stage in self.mhsa_stages,
          use_eca=self.eca_placement == "block",
          num_heads=self.num_heads,
          train=train,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name=f"layer{s + 1}_{i}",
        )(x)
      if self.eca_placement == "stage":
        x = eca(name=f"eca_layer{s + 1}")(x)
      outputs[STAGE_KEYS[s]] = x
    return outputs
