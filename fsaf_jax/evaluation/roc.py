"""Positive / negative pair distances and the ROC of a query / gallery evaluation.

  pairs = pair_distances(distmat, q_pids, g_pids, q_camids, g_camids)
  tpr_at_fpr(pairs)        # {'TPR@FPR=1e-04': ..., 'TPR@FPR=1e-03': ..., 'TPR@FPR=1e-02': ...}

The pairs are fast-reid's (`fastreid/evaluation/roc.py`): every (query, gallery) pair
except the gallery images of the query's identity seen by the query's camera (the
images the metrics leave out) and junk (pid -1, which fast-reid does not load);
positive = same identity, negative = another identity (distractors, pid 0, included).

TPR@FPR is reported as fast-reid's evaluator reports it: the ROC of the distance as
the score with the negative pairs as the class detected (fast-reid's labels: 0 for a
positive pair, 1 for a negative), read at the point whose FPR is nearest the target
(the first such point, thresholds descending). So 'TPR@FPR=1e-04' is the fraction of
negative pairs farther apart than the distance at which only 1e-4 of the positive pairs
are farther apart. The ROC has a point at every distinct distance (sklearn's
`roc_curve` with `drop_intermediate=False`) and starts at (0, 0).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fsaf_jax.evaluation import inputs

FPR_TARGETS = (1e-4, 1e-3, 1e-2)


def tpr_key(fpr: float) -> str:
  """fast-reid's name of a TPR@FPR figure: 1e-4 -> 'TPR@FPR=1e-04'."""
  return f"TPR@FPR={fpr:.0e}"


@dataclasses.dataclass(frozen=True)
class PairDistances:
  """Distances of the positive and negative (query, gallery) pairs.

  Attributes:
    positive: float32 [P], sorted ascending.
    negative: float32 [Q], sorted ascending.
  """

  positive: np.ndarray
  negative: np.ndarray


def pair_distances(distmat, q_pids, g_pids, q_camids, g_camids) -> PairDistances:
  """The positive and negative pair distances of a distance matrix (module doc).

  Args:
    distmat: [M, N] distances (NumPy or jax.Array).
    q_pids, g_pids, q_camids, g_camids: int [M], [N], [M], [N] (gallery pid -1: junk).

  Returns:
    `PairDistances`.

  Raises:
    inputs.EvaluationInputError: shapes that do not match, or no positive or no
      negative pair.
  """
  q_pids, g_pids, q_camids, g_camids = inputs.query_gallery_ids(q_pids, g_pids, q_camids, g_camids)
  inputs.distance_matrix_shape("distmat", distmat, q_pids.shape[0], g_pids.shape[0])
  distmat = np.asarray(distmat, np.float32)
  same_pid = q_pids[:, None] == g_pids[None, :]
  keep = ~(same_pid & (q_camids[:, None] == g_camids[None, :])) & (g_pids >= 0)[None, :]
  positive = np.sort(distmat[keep & same_pid])
  negative = np.sort(distmat[keep & ~same_pid])
  if positive.size == 0 or negative.size == 0:
    raise inputs.EvaluationInputError(
      f"{positive.size} positive and {negative.size} negative pairs: the ROC needs both"
    )
  return PairDistances(positive, negative)


def _rejected_fraction(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """Fraction of `sorted_values` (ascending) >= each threshold."""
  below = np.searchsorted(sorted_values, thresholds, side="left")
  return (sorted_values.size - below) / sorted_values.size


def tpr_at_fpr(pairs: PairDistances, fprs=FPR_TARGETS) -> dict[str, float]:
  """fast-reid's TPR at each FPR of `fprs` (module doc), keyed `tpr_key(fpr)`.

  The FPR of the point at distance threshold t is the fraction of positives >= t; it
  takes the values k / P with k = 0 (the start) or the number of positives >= a
  positive distance. The nearest to the target (the smaller on a tie) is reached first
  at t = the k-th largest positive distance, where the TPR is the fraction of
  negatives >= t (0 at the start).
  """
  pos = pairs.positive
  # k at each group of equal positive distances (largest first): positives >= the value.
  descending = pos[::-1]
  ends = np.nonzero(np.append(descending[1:] != descending[:-1], True))[0] + 1
  ks = np.concatenate([[0], ends])
  out = {}
  for target in fprs:
    k = int(ks[np.argmin(np.abs(ks / pos.size - target))])
    if k == 0:
      out[tpr_key(target)] = 0.0
    else:
      out[tpr_key(target)] = float(_rejected_fraction(pairs.negative, descending[k - 1 : k])[0])
  return out


def roc_curve(pairs: PairDistances, max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
  """(FPR, TPR) of the module's ROC at up to `max_points` thresholds (for the figure):
  the distinct positive distances (evenly thinned), both float64, FPR ascending."""
  thresholds = np.unique(pairs.positive)[::-1]
  if thresholds.size > max_points:
    thresholds = thresholds[np.linspace(0, thresholds.size - 1, max_points).astype(np.int64)]
  fpr = _rejected_fraction(pairs.positive, thresholds)
  tpr = _rejected_fraction(pairs.negative, thresholds)
  return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])
