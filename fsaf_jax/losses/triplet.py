"""Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances.

For every anchor `i` of the batch, the hardest positive is the farthest *other* sample
with the same label and the hardest negative the nearest sample with a different
label. With a margin `m` the per-anchor loss is `max(0, d_ap - d_an + m)`
(`F.margin_ranking_loss` in fast-reid / BoT); with `margin=None` it is the soft margin
`log(1 + exp(d_ap - d_an))` (`F.soft_margin_loss`).

Anchors without a positive (an identity with a single image in the batch) or without a
negative (a batch holding a single identity) have no triplet: they are excluded from
the mean, and a batch with no valid anchor has loss 0 (and zero gradient). fast-reid
instead counts the anchor itself as its own positive at distance 0; with P x K sampling
and K >= 2 every anchor has a positive and the two definitions agree.

Distances are computed as `|a|^2 + |b|^2 - 2 a.b` in float32 (a Gram matrix: O(N^2)
memory, where the difference form `sum((a - b)^2)` materialises [N, N, C] in the
backward pass, ~1 GB at N=256, C=3584), clamped at 1e-12 before the square root (as
fast-reid), so identical features (distance 0) give a finite value (1e-6) and finite
gradients instead of the NaN of `d sqrt(x)/dx` at 0. The expansion cancels: for two
nearly identical features at distance r from the batch mean (features are centred
first, which removes the common offset of post-ReLU features) the distance is only
accurate to about `r * sqrt(float32 eps) ~ 3e-4 r`; larger distances (the ones that
matter for the hinge) are accurate to float32 rounding.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from data_pipelines import errors
from fsaf_jax.losses.registry import register_loss

_MIN_SQUARED_DISTANCE = 1e-12  # fast-reid's clamp before sqrt


def euclidean_distances(x: jax.Array) -> jax.Array:
  """Pairwise Euclidean distances between the rows of `x`.

  Args:
    x: features [N, C] (any float dtype; computed in float32).

  Returns:
    float32 [N, N], `sqrt(max(|x_i - x_j|^2, 1e-12))`: finite with finite gradients
    for identical rows (including the diagonal).
  """
  x = x.astype(jnp.float32)
  # Distances are translation invariant; centring removes the shared offset of
  # non-negative (post-ReLU) features, which is what makes the expansion cancel.
  x = x - jnp.mean(x, axis=0, keepdims=True)
  sq = jnp.sum(x * x, axis=-1)
  # HIGHEST: TPUs otherwise multiply float32 in bfloat16 passes.
  gram = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
  d2 = sq[:, None] + sq[None, :] - 2.0 * gram
  d2 = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, d2)  # exact zero diagonal
  return jnp.sqrt(jnp.maximum(d2, _MIN_SQUARED_DISTANCE))


def hard_example_mining(
  dist: jax.Array, labels: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Hardest positive and negative distance of each anchor.

  Args:
    dist: distances [N, N].
    labels: integer identities [N].

  Returns:
    `(d_ap, d_an, valid)`, each [N]: `d_ap[i]` the largest distance from `i` to another
    sample with label `labels[i]`, `d_an[i]` the smallest distance to a sample with a
    different label, `valid[i]` True when both exist. Where `valid` is False the
    distances are 0 (placeholders, not to be used).
  """
  n = dist.shape[0]
  same = labels[:, None] == labels[None, :]
  is_pos = same & ~jnp.eye(n, dtype=bool)
  is_neg = ~same
  has_pos = jnp.any(is_pos, axis=1)
  has_neg = jnp.any(is_neg, axis=1)
  # Distances are >= 0, so 0 is a neutral fill for the max; the fill for the min is
  # any finite value above every distance. Filled entries get zero gradient.
  d_ap = jnp.max(jnp.where(is_pos, dist, 0.0), axis=1)
  big = jax.lax.stop_gradient(jnp.max(dist)) + 1.0
  d_an = jnp.min(jnp.where(is_neg, dist, big), axis=1)
  valid = has_pos & has_neg
  return jnp.where(valid, d_ap, 0.0), jnp.where(valid, d_an, 0.0), valid


def triplet_loss_from_distances(
  d_ap: jax.Array, d_an: jax.Array, valid: jax.Array, margin: float | None
) -> jax.Array:
  """Mean triplet loss over the valid anchors.

  Args:
    d_ap: hardest-positive distances [N].
    d_an: hardest-negative distances [N].
    valid: bool [N], anchors that take part.
    margin: hinge margin, or None for the soft margin `log(1 + exp(d_ap - d_an))`.

  Returns:
    Scalar float32: mean over valid anchors; 0 when none is valid.
  """
  diff = d_ap - d_an
  if margin is None:
    per_anchor = jax.nn.softplus(diff)
  else:
    per_anchor = jax.nn.relu(diff + margin)
  per_anchor = jnp.where(valid, per_anchor, 0.0)
  count = jnp.sum(valid.astype(jnp.float32))
  return jnp.sum(per_anchor) / jnp.maximum(count, 1.0)


def batch_hard_triplet_loss(
  features: jax.Array, labels: jax.Array, margin: float | None = 0.3
) -> jax.Array:
  """Batch-hard triplet loss on the Euclidean distances of `features`.

  Args:
    features: embeddings [N, C] (the pre-BNNeck feature).
    labels: integer identities [N].
    margin: hinge margin (default 0.3, the BoT recipe), or None for the soft margin.

  Returns:
    Scalar float32 loss: mean over anchors that have both a positive and a negative
    (0 if no anchor has).
  """
  if features.ndim != 2:
    raise ValueError(f"features must be [N, C], got shape {features.shape}")
  if labels.shape != features.shape[:1]:
    raise ValueError(
      f"labels must be [N] with N={features.shape[0]} (features {features.shape}), "
      f"got shape {labels.shape}"
    )
  if margin is not None and margin < 0:
    raise ValueError(f"triplet margin must be >= 0 or None (soft margin), got {margin}")
  dist = euclidean_distances(features)
  d_ap, d_an, valid = hard_example_mining(dist, labels)
  return triplet_loss_from_distances(d_ap, d_an, valid, margin)


def _check(loss_config) -> None:
  """Raises errors.UserError unless `config.loss.triplet_margin` is >= 0 or None (soft
  margin)."""
  margin = loss_config.triplet_margin
  if margin is not None and not float(margin) >= 0:
    raise errors.UserError(
      f"config.loss.triplet_margin={margin}: must be >= 0, or None for the soft margin "
      "(the recipe's 0.3)"
    )


@register_loss("triplet", check=_check)
def triplet_term(outputs: Mapping[str, jax.Array], labels: jax.Array, loss_config) -> jax.Array:
  """The 'triplet' loss (`config.loss.triplet_weight`): `batch_hard_triplet_loss` of the
  pre-BNNeck `outputs['feat']` [B, C] with margin `config.loss.triplet_margin`."""
  return batch_hard_triplet_loss(outputs["feat"], labels, loss_config.triplet_margin)
