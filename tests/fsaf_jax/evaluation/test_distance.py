"""Tests of the query-gallery distances against float64 NumPy brute force."""

import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.evaluation import distance
from fsaf_jax.evaluation.inputs import EvaluationInputError


def _feats(seed, m=37, n=53, d=24):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((m, d)).astype(np.float32), rng.standard_normal((n, d)).astype(
    np.float32
  )


def _brute_force(q, g, metric):
  q, g = q.astype(np.float64), g.astype(np.float64)
  out = np.empty((q.shape[0], g.shape[0]))
  for i in range(q.shape[0]):
    for j in range(g.shape[0]):
      if metric == "cosine":
        nq = max(np.linalg.norm(q[i]), 1e-12)
        ng = max(np.linalg.norm(g[j]), 1e-12)
        out[i, j] = 1.0 - np.dot(q[i] / nq, g[j] / ng)
      else:
        out[i, j] = np.sum((q[i] - g[j]) ** 2)
  return out


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_brute_force(metric):
  q, g = _feats(0)
  q[3] = 0.0  # a zero feature: cosine distance 1 to everything, as torch's normalize gives
  got = np.asarray(distance.pairwise_distance(q, g, metric))
  want = _brute_force(q, g, metric)
  assert got.shape == (37, 53) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=2e-5 * (1 if metric == "cosine" else want.max()))
  if metric == "cosine":
    np.testing.assert_array_equal(got[3], np.ones(53, np.float32))


def test_euclidean_is_squared_clamped_and_orders_like_euclidean():
  q, g = _feats(1)
  g[5] = q[2]  # identical vectors: expanded form may round below 0, must be clamped
  d = np.asarray(distance.pairwise_distance(q, g, "euclidean"))
  assert d.min() >= 0.0
  assert d[2, 5] <= 1e-4
  true = np.sqrt(_brute_force(q, g, "euclidean"))
  # Same ranking as the (non-squared) Euclidean distance.
  np.testing.assert_array_equal(np.argsort(d, axis=1), np.argsort(true, axis=1))


def test_accepts_jax_arrays():
  q, g = _feats(3)
  np.testing.assert_array_equal(
    np.asarray(distance.pairwise_distance(jnp.asarray(q), jnp.asarray(g))),
    np.asarray(distance.pairwise_distance(q, g)),
  )


def test_bad_input():
  q, g = _feats(4)
  with pytest.raises(EvaluationInputError, match="Unknown metric 'l1'"):
    distance.pairwise_distance(q, g, "l1")
  with pytest.raises(EvaluationInputError, match=r"\(37, 24\) and \(53, 5\)"):
    distance.pairwise_distance(q, g[:, :5])
