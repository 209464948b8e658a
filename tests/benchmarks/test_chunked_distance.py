"""Tests of the benchmarks' block-wise distance matrix against `distance.pairwise_distance`."""

import numpy as np
import pytest

from benchmarks import chunked_distance
from fsaf_jax.evaluation import distance
from fsaf_jax.evaluation.inputs import EvaluationInputError


def _feats(seed, m=37, n=53, d=24):
  rng = np.random.default_rng(seed)
  return (
    rng.standard_normal((m, d)).astype(np.float32),
    rng.standard_normal((n, d)).astype(np.float32),
  )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("chunk", [1, 10, 37, 100])
def test_chunked_equals_unchunked(metric, chunk):
  q, g = _feats(2)
  full = np.asarray(distance.pairwise_distance(q, g, metric))
  chunked = chunked_distance.pairwise_distance_chunked(q, g, metric, query_chunk=chunk)
  assert isinstance(chunked, np.ndarray)
  np.testing.assert_allclose(chunked, full, rtol=1e-6, atol=1e-6)


def test_bad_input():
  q, g = _feats(4)
  with pytest.raises(EvaluationInputError, match="same D"):
    chunked_distance.pairwise_distance_chunked(q, g[:, :5])
  with pytest.raises(EvaluationInputError, match="Unknown metric 'l1'"):
    chunked_distance.pairwise_distance_chunked(q, g, "l1")
