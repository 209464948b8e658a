"""Tests of `roc`: fast-reid's pairs and TPR@FPR against brute-force NumPy references.

The references follow fast-reid's `evaluate_roc` loop (per query: the gallery sorted by
distance, same-identity-same-camera images removed; positives / negatives collected)
and an ROC evaluated at every distinct threshold, descending, starting at (0, 0), with
fast-reid's labels (0 positive pair, 1 negative pair, the distance as the score).
"""

import numpy as np
import pytest

from fsaf_jax.evaluation import inputs, roc


def reference_pairs(distmat, q_pids, g_pids, q_camids, g_camids):
  """fast-reid's loop (`fastreid/evaluation/roc.py`), junk (pid -1) left out."""
  pos, neg = [], []
  for q in range(distmat.shape[0]):
    for g in np.argsort(distmat[q], kind="stable"):
      if g_pids[g] < 0 or (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q]):
        continue
      (pos if g_pids[g] == q_pids[q] else neg).append(distmat[q, g])
  return np.array(pos, np.float32), np.array(neg, np.float32)


def reference_tpr_at_fpr(pos, neg, target):
  """ROC at every distinct score (descending), from (0, 0); argmin |fpr - target|."""
  scores = np.concatenate([pos, neg]).astype(np.float64)
  labels = np.concatenate([np.zeros(pos.size), np.ones(neg.size)])  # 1: negative pair
  fprs, tprs = [0.0], [0.0]
  for t in sorted(set(scores.tolist()), reverse=True):
    above = scores >= t
    tprs.append(np.sum(above & (labels == 1)) / neg.size)
    fprs.append(np.sum(above & (labels == 0)) / pos.size)
  return tprs[int(np.argmin(np.abs(np.array(fprs) - target)))]


def problem(seed, m=30, n=200, num_ids=12, decimals=None):
  rng = np.random.default_rng(seed)
  q_pids = rng.integers(1, num_ids, m)
  g_pids = rng.integers(-1, num_ids, n)
  q_camids, g_camids = rng.integers(0, 4, m), rng.integers(0, 4, n)
  distmat = rng.uniform(0, 2, (m, n)).astype(np.float32)
  distmat -= 0.5 * (q_pids[:, None] == g_pids[None, :])  # positives nearer
  if decimals is not None:  # ties
    distmat = np.round(distmat, decimals)
  return distmat, q_pids, g_pids, q_camids, g_camids


@pytest.mark.parametrize("seed, decimals", [(0, None), (1, None), (2, 1), (3, 2)])
def test_pairs_and_tpr_at_fpr_equal_the_references(seed, decimals):
  case = problem(seed, decimals=decimals)
  pairs = roc.pair_distances(*case)
  pos, neg = reference_pairs(*case)
  np.testing.assert_array_equal(pairs.positive, np.sort(pos))
  np.testing.assert_array_equal(pairs.negative, np.sort(neg))
  # FPR targets reachable with these few positives, and fast-reid's three.
  targets = (1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5)
  got = roc.tpr_at_fpr(pairs, targets)
  assert list(got) == [roc.tpr_key(t) for t in targets]
  for target in targets:
    assert got[roc.tpr_key(target)] == pytest.approx(reference_tpr_at_fpr(pos, neg, target))
  assert 0.0 < got[roc.tpr_key(0.2)] < 1.0  # not a trivial case


def test_hand_computed_case():
  # One query (pid 1, camera 0); gallery: a same-camera positive (left out), two
  # positives at 0.1 and 0.4, junk (left out), negatives at 0.2, 0.3, 0.5, 0.6.
  distmat = np.array([[0.05, 0.1, 0.4, 0.0, 0.2, 0.3, 0.5, 0.6]], np.float32)
  q_pids, q_camids = np.array([1]), np.array([0])
  g_pids = np.array([1, 1, 1, -1, 2, 3, 0, 2])
  g_camids = np.array([0, 1, 2, 1, 1, 1, 1, 1])
  pairs = roc.pair_distances(distmat, q_pids, g_pids, q_camids, g_camids)
  np.testing.assert_allclose(pairs.positive, [0.1, 0.4])
  np.testing.assert_allclose(pairs.negative, [0.2, 0.3, 0.5, 0.6])
  # FPR steps 0, 1/2 (threshold 0.4: negatives 0.5, 0.6 above: TPR 2/4), 1 (0.1: 4/4).
  got = roc.tpr_at_fpr(pairs, (0.0, 0.3, 0.5, 0.8))
  assert got == {"TPR@FPR=0e+00": 0.0, "TPR@FPR=3e-01": 0.5, "TPR@FPR=5e-01": 0.5,
                 "TPR@FPR=8e-01": 1.0}  # fmt: skip
  fpr, tpr = roc.roc_curve(pairs)
  np.testing.assert_allclose(fpr, [0.0, 0.5, 1.0])
  np.testing.assert_allclose(tpr, [0.0, 0.5, 1.0])
  assert roc.tpr_key(1e-4) == "TPR@FPR=1e-04"  # fast-reid's key


def test_no_negative_pair_is_refused():
  with pytest.raises(inputs.EvaluationInputError, match="0 negative"):
    roc.pair_distances(np.zeros((1, 2)), [1], [1, 1], [0], [1, 2])
