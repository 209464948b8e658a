"""Centre loss (Wen et al. 2016), as in the BoT recipe ("Bag of Tricks", Luo et al.).

`L_c = 1/B * sum_i |f_i - c_{y_i}|^2`: the squared Euclidean distance of each pre-BN
feature to its identity's centre, summed over the feature and averaged over the batch
(BoT's `CenterLoss`; no factor 1/2). The centres are an extra [num_classes, C] array
trained by SGD (`config.optim.center_lr`) on the *unweighted* loss, as BoT rescales the
centre gradients by `1 / center_loss_weight`; the features receive the weighted one.
"""

import jax
import jax.numpy as jnp


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
