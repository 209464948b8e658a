"""Centre loss (Wen et al. 2016), as in the BoT recipe ("Bag of Tricks", Luo et al.):
the 'center' loss (`config.loss.center_weight`).

`L_c = 1/B * sum_i |f_i - c_{y_i}|^2`: the squared Euclidean distance of each pre-BN
feature to its identity's centre, summed over the feature and averaged over the batch
(BoT's `CenterLoss`; no factor 1/2). The centres are the term's trained parameters, a
[num_classes, C] array trained by SGD (`config.loss.center_lr`) on the *unweighted*
loss, as BoT rescales the centre gradients by `1 / center_loss_weight`
(`center_optimizer`); the features receive the weighted one.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from data_pipelines import errors
from fsaf_jax.losses.registry import register_loss


def init_centers(rng: jax.Array, num_classes: int, feature_dim: int) -> jax.Array:
  """Initial centres [num_classes, feature_dim], standard normal (BoT's `torch.randn`)."""
  return jax.random.normal(rng, (num_classes, feature_dim), jnp.float32)


def center_loss(features: jax.Array, labels: jax.Array, centers: jax.Array) -> jax.Array:
  """Mean squared distance of each feature to its class centre.

  Args:
    features: [B, C] features (pre-BNNeck).
    labels: int [B], class indices in [0, num_classes).
    centers: [num_classes, C].

  Returns:
    Scalar float32 `sum_i |features_i - centers[labels_i]|^2 / B`.
  """
  if features.ndim != 2 or centers.ndim != 2 or features.shape[1] != centers.shape[1]:
    raise ValueError(
      f"features [B, C] and centers [num_classes, C] must agree on C; got features "
      f"{features.shape} and centers {centers.shape}"
    )
  if labels.shape != features.shape[:1]:
    raise ValueError(f"labels must be [B]={features.shape[:1]}, got {labels.shape}")
  diff = features.astype(jnp.float32) - centers[labels].astype(jnp.float32)
  return jnp.sum(diff * diff) / features.shape[0]


def divide_updates(divisor: float) -> optax.GradientTransformation:
  """Stateless transformation dividing every update by `divisor`."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda g: g / divisor, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def center_optimizer(loss_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """BoT's centre optimiser: SGD with lr `config.loss.center_lr` on the gradient of the
  *unweighted* centre loss (the gradient of the total divided by
  `config.loss.center_weight`)."""
  return optax.chain(divide_updates(loss_config.center_weight), optax.sgd(loss_config.center_lr))


def _check(loss_config: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError unless `config.loss.center_lr` is positive."""
  if not float(loss_config.center_lr) > 0:
    raise errors.UserError(
      f"config.loss.center_lr={loss_config.center_lr}: must be > 0 (BoT's 0.5)"
    )


def _init(
  rng: jax.Array, num_classes: int, feature_dim: int, loss_config: ml_collections.ConfigDict
) -> jax.Array:
  del loss_config
  return init_centers(rng, num_classes, feature_dim)


@register_loss("center", init=_init, optimizer=center_optimizer, check=_check)
def center_term(
  outputs: Mapping[str, jax.Array],
  labels: jax.Array,
  loss_config: ml_collections.ConfigDict,
  params: jax.Array,
) -> jax.Array:
  """`center_loss` of the pre-BNNeck `outputs['feat']` [B, C] against the centres
  `params` [num_classes, C]."""
  del loss_config
  return center_loss(outputs["feat"], labels, params)
