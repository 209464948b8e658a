"""The ReID training objective: label-smoothed cross-entropy + triplet (+ centre).

`total = ce_weight * CE(logits, smooth(onehot, eps)) + triplet_weight * triplet(feat)
+ center_weight * center(feat, centers)`, with the weights, smoothing, and margin from
`config.loss` (`configs/base.py`). Label smoothing follows BoT / fast-reid's
`CrossEntropyLabelSmooth`: targets `(1 - eps) * onehot + eps / num_classes`, which is
exactly `optax.smooth_labels`.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fsaf_jax.losses.center import center_loss
from fsaf_jax.losses.triplet import batch_hard_triplet_loss


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


def reid_loss(
  outputs: Mapping[str, jax.Array],
  labels: jax.Array,
  loss_config: ml_collections.ConfigDict,
  centers: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the ReID losses.

  Args:
    outputs: model outputs with `'logits'` [B, num_classes] and `'feat'` [B, C]
      (pre-BNNeck).
    labels: int [B] training identities.
    loss_config: `config.loss`: `ce_weight`, `label_smoothing`, `triplet_weight`,
      `triplet_margin` (None = soft margin), `center_weight`.
    centers: [num_classes, C] centre-loss centres; required iff `center_weight > 0`.

  Returns:
    `(total, parts)`: scalar float32 total, and a dict of the *unweighted* parts
    `'ce'`, `'triplet'` (and `'center'` when enabled), scalars. Losses with weight 0
    are not computed and not reported.
  """
  parts = {}
  total = jnp.zeros((), jnp.float32)
  if loss_config.ce_weight:
    parts["ce"] = smoothed_cross_entropy(outputs["logits"], labels, loss_config.label_smoothing)
    total += loss_config.ce_weight * parts["ce"]
  if loss_config.triplet_weight:
    parts["triplet"] = batch_hard_triplet_loss(outputs["feat"], labels, loss_config.triplet_margin)
    total += loss_config.triplet_weight * parts["triplet"]
  if loss_config.center_weight:
    if centers is None:
      raise ValueError(
        f"config.loss.center_weight={loss_config.center_weight} but no centres were "
        "given (create the train state with the same loss config)"
      )
    parts["center"] = center_loss(outputs["feat"], labels, centers)
    total += loss_config.center_weight * parts["center"]
  return total, parts
