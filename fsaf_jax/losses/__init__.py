"""ReID losses: label-smoothed cross-entropy, batch-hard triplet, centre loss."""

from fsaf_jax.losses.center import center_loss, init_centers
from fsaf_jax.losses.reid_loss import reid_loss, smoothed_cross_entropy
from fsaf_jax.losses.triplet import batch_hard_triplet_loss, euclidean_distances

__all__ = [
  "batch_hard_triplet_loss",
  "center_loss",
  "euclidean_distances",
  "init_centers",
  "reid_loss",
  "smoothed_cross_entropy",
]
