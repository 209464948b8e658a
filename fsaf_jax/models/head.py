"""BNNeck head (Luo et al. 2019, "Bag of Tricks"): pool, BatchNorm1d, linear classifier.

The BatchNorm's shift is frozen at 0 (no bias parameter) and the classifier has no
bias, as the BoT / fast-reid recipe. The head computes in float32 whatever the
backbone's dtype: it is cheap and feeds the losses and the embedding.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from fsaf_jax.core.errors import UserError
from fsaf_jax.models.norm import BatchNorm
from fsaf_jax.models.pooling import POOLINGS, gem_pool, global_avg_pool


class BNNeckHead(nn.Module):
  """Pooling + BNNeck + classifier.

  Parameters: `bnneck/scale` (+ batch_stats `bnneck/{mean,var}`) and
  `classifier/kernel` (C, num_classes), initialised normal(std=0.001).

  Attributes:
    num_classes: training identities.
    pooling: 'avg' or 'gem'.
    gem_p: GeM exponent.
    param_dtype: parameter dtype.
  """

  num_classes: int
  pooling: str = "avg"
  gem_p: float = 3.0
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    """Raises ValueError naming the `config.model` field of an unsupported setting."""
    if self.num_classes < 1:
      raise UserError(f"model.num_classes={self.num_classes!r}: must be positive")
    if self.pooling not in POOLINGS:
      raise UserError(f"model.pooling={self.pooling!r}: must be one of {POOLINGS}")
    if self.pooling == "gem" and self.gem_p <= 0:
      raise UserError(f"model.gem_p={self.gem_p!r}: the GeM exponent must be positive")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> dict[str, jnp.ndarray]:
    """Maps a feature map [N, H, W, C] to float32 'feat' [N, C], 'bn_feat' [N, C], 'logits'."""
    feat = gem_pool(x, self.gem_p) if self.pooling == "gem" else global_avg_pool(x)
    bn_feat = BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      use_bias=False,
      dtype=jnp.float32,
      param_dtype=self.param_dtype,
      name="bnneck",
    )(feat)
    logits = nn.Dense(
      self.num_classes,
      use_bias=False,
      kernel_init=nn.initializers.normal(stddev=0.001),
      dtype=jnp.float32,
      param_dtype=self.param_dtype,
      name="classifier",
    )(bn_feat)
    return {"feat": feat, "bn_feat": bn_feat, "logits": logits}


def num_classes_of(variables: Any) -> int:
  """Classifier width (training identities) of a model's variables with a `BNNeckHead`
  under 'head' (concrete arrays or `jax.eval_shape` structures).

  Raises:
    ValueError: no `params/head/classifier/kernel` (not FSAF variables).
  """
  try:
    kernel = variables["params"]["head"]["classifier"]["kernel"]
  except (KeyError, TypeError) as e:
    keys = sorted(variables["params"]) if "params" in variables else sorted(variables)
    raise ValueError(
      "variables have no params/head/classifier/kernel: expected the FSAF model's "
      f"{{'params', 'batch_stats'}}; top-level keys {keys}"
    ) from e
  return int(kernel.shape[-1])
