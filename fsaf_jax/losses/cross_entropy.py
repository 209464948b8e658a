"""Label-smoothed softmax cross-entropy, the 'ce' loss (`config.loss.ce_weight`).

Label smoothing follows BoT / fast-reid's `CrossEntropyLabelSmooth`: targets
`(1 - eps) * onehot + eps / num_classes` with `eps = config.loss.label_smoothing`,
which is exactly `optax.smooth_labels`.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax

from data_pipelines import errors
from fsaf_jax.losses.registry import register_loss


def smoothed_cross_entropy(
  logits: jax.Array, labels: jax.Array, label_smoothing: float
) -> jax.Array:
  """Mean softmax cross-entropy against label-smoothed one-hot targets.

  Args:
    logits: [B, num_classes].
    labels: int [B].
    label_smoothing: eps in [0, 1).

  Returns:
    Scalar float32.
  """
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), targets))


def _check(loss_config) -> None:
  """Raises errors.UserError unless `config.loss.label_smoothing` is in [0, 1)."""
  if not 0.0 <= float(loss_config.label_smoothing) < 1.0:
    raise errors.UserError(
      f"config.loss.label_smoothing={loss_config.label_smoothing}: must be in [0, 1) "
      "(the recipe's 0.1)"
    )


@register_loss("ce", check=_check)
def ce_term(outputs: Mapping[str, jax.Array], labels: jax.Array, loss_config) -> jax.Array:
  """`smoothed_cross_entropy` of `outputs['logits']` [B, num_classes]; scalar float32."""
  return smoothed_cross_entropy(outputs["logits"], labels, loss_config.label_smoothing)
