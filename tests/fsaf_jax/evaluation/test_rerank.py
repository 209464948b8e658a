"""Tests of the JAX k-reciprocal re-ranking against the per-row NumPy formulation.

The reference is `tests/reference/rerank_numpy.py` (torchreid's / fast-reid's loop with
a stable argsort and float32 arrays).
"""

import importlib.util
import pathlib
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.evaluation import distance, metrics, rerank
from fsaf_jax.evaluation.inputs import EvaluationInputError
from tests.reference import rerank_numpy


def _clustered(seed, nq=60, ng=200, ids=30, dim=16, noise=0.7, grid=None):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((ids, dim))
  q_pids, g_pids = rng.integers(0, ids, nq), rng.integers(0, ids, ng)
  qf = centres[q_pids] + noise * rng.standard_normal((nq, dim))
  gf = centres[g_pids] + noise * rng.standard_normal((ng, dim))
  if grid:  # coarse grid: duplicate features, exactly tied distances
    qf, gf = np.round(qf / grid) * grid, np.round(gf / grid) * grid
  return qf.astype(np.float32), gf.astype(np.float32), q_pids, g_pids


def _blocks(qf, gf, metric):
  pd = lambda a, b: np.asarray(distance.pairwise_distance(a, b, metric))
  return pd(qf, gf), pd(qf, qf), pd(gf, gf)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("grid", [None, 1.0])
def test_parity_with_reference(metric, grid):
  qf, gf, _, _ = _clustered(0, grid=grid)
  q_g, q_q, g_g = _blocks(qf, gf, metric)
  if grid:  # ties present in the initial ranking
    all_d = np.block([[q_q, q_g], [q_g.T, g_g]])
    s = np.sort(all_d, axis=1)
    assert (s[:, 1:22] == s[:, :21]).sum() > 50
  assert np.array_equal(q_q, q_q.T) and np.array_equal(g_g, g_g.T)
  want = rerank_numpy.re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
  for row_chunk, query_rows in ((1024, 256), (37, 7)):  # chunks not dividing 60 / 260
    for symmetric in (False, True):
      got = rerank.re_ranking(
        q_g, q_q, g_g, row_chunk=row_chunk, query_rows=query_rows, symmetric=symmetric
      )
      assert got.shape == (60, 200) and got.dtype == np.float32
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # Re-ranking changed the distances substantially (the comparison is not vacuous).
  assert np.abs(want - q_g / np.max(np.concatenate([q_q, q_g.T]), axis=0)[:60, None]).max() > 0.1


@pytest.mark.parametrize(("k1", "k2", "lam"), [(5, 1, 0.5), (7, 3, 0.0), (26, 6, 1.0)])
def test_parity_other_parameters(k1, k2, lam):
  qf, gf, _, _ = _clustered(1, nq=40, ng=150, grid=0.5)
  q_g, q_q, g_g = _blocks(qf, gf, "euclidean")
  want = rerank_numpy.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
  got = rerank.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam, row_chunk=64)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_parity_non_symmetric_distances_and_signed_zeros():
  # The dense formulation normalises D by its column maxima and transposes; with a
  # non-symmetric D that is not the same as normalising rows. Check we follow it.
  rng = np.random.default_rng(2)
  nq, ng = 30, 90
  q_g = rng.random((nq, ng)).astype(np.float32)
  q_q = rng.random((nq, nq)).astype(np.float32)
  g_g = rng.random((ng, ng)).astype(np.float32)
  np.fill_diagonal(q_q, 0.0)
  # -0.0 and 0.0 must tie (broken by index) as in argsort; lax.top_k alone puts 0.0 first.
  np.fill_diagonal(g_g, -0.0)
  g_g[np.arange(ng - 1), np.arange(1, ng)] = 0.0  # D^T row g+1: 0.0 at g, -0.0 at g+1
  want = rerank_numpy.re_ranking(q_g, q_q, g_g)
  got = rerank.re_ranking(q_g, q_q, g_g, row_chunk=16, query_rows=8)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # The symmetric shortcut reads the other triangle: a different answer here.
  sym = rerank.re_ranking(q_g, q_q, g_g, row_chunk=16, query_rows=8, symmetric=True)
  assert np.abs(sym - want).max() > 1e-3


def test_initial_rank_is_a_stable_argsort():
  # Heavy ties, negative values and signed zeros: lax.top_k alone would put 0.0 before
  # an earlier -0.0; the ranking must equal np.argsort(kind='stable') of D^T / colmax.
  rng = np.random.default_rng(6)
  nq, ng = 20, 50
  q_q, q_g, g_g = (
    (rng.integers(-2, 4, shape) / 2 * np.where(rng.random(shape) < 0.3, -1, 1)).astype(np.float32)
    for shape in ((nq, nq), (nq, ng), (ng, ng))
  )  # the sign flips turn some 0.0 into -0.0
  q_q[0], q_g[0] = np.abs(q_q[0]) + 0.5, np.abs(q_g[0]) + 0.5  # column maxima of D > 0
  all_d = np.block([[q_q, q_g], [q_g.T, g_g]])
  assert np.signbit(all_d[all_d == 0]).any() and not np.signbit(all_d[all_d == 0]).all()
  want = np.argsort((all_d / all_d.max(axis=0)).T, axis=1, kind="stable")[:, :21]
  blocks = tuple(jnp.asarray(b) for b in (q_q, q_g, g_g))
  top_q, _, _ = rerank._initial_rank(*blocks, 0, 21, nq, False, False)
  top_g, _, _ = rerank._initial_rank(*blocks, 0, 21, ng, True, False)
  np.testing.assert_array_equal(np.concatenate([top_q, top_g]), want)


def test_features_path_and_device_inputs():
  qf, gf, _, _ = _clustered(3)
  q_g, q_q, g_g = _blocks(qf, gf, "cosine")
  from_blocks = rerank.re_ranking(q_g, q_q, g_g)
  np.testing.assert_array_equal(rerank.re_ranking_features(qf, gf, metric="cosine"), from_blocks)
  on_device = rerank.re_ranking(jnp.asarray(q_g), jnp.asarray(q_q), jnp.asarray(g_g))
  np.testing.assert_array_equal(on_device, from_blocks)


def test_reranking_helps_on_clustered_data():
  qf, gf, q_pids, g_pids = _clustered(4, nq=80, ng=400, ids=40, noise=1.0)
  rng = np.random.default_rng(4)
  q_cams, g_cams = rng.integers(0, 6, 80), rng.integers(0, 6, 400)
  ids = (q_pids, g_pids, q_cams, g_cams)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    plain = metrics.evaluate(np.asarray(distance.pairwise_distance(qf, gf)), *ids)
    reranked = metrics.evaluate(rerank.re_ranking_features(qf, gf), *ids)
  assert reranked.mAP > plain.mAP + 0.02


def test_bad_input_messages():
  qf, gf, _, _ = _clustered(5, nq=10, ng=30)
  q_g, q_q, g_g = _blocks(qf, gf, "euclidean")
  with pytest.raises(EvaluationInputError, match=r"g_g_dist has shape \(29, 29\)"):
    rerank.re_ranking(q_g, q_q, g_g[:29, :29])
  with pytest.raises(EvaluationInputError, match=r"q_q_dist has shape \(10, 30\)"):
    rerank.re_ranking(q_g, q_g, g_g)
  bad = g_g.copy()
  bad[3, 4] = np.nan
  with pytest.raises(EvaluationInputError, match="image 14 of the 40"):
    rerank.re_ranking(q_g, q_q, bad)
  with pytest.raises(EvaluationInputError, match="k1=0"):
    rerank.re_ranking(q_g, q_q, g_g, k1=0)
  with pytest.raises(EvaluationInputError, match="non-empty"):
    rerank.re_ranking(q_g[:0], q_q[:0, :0], g_g)
  with pytest.raises(EvaluationInputError, match="gallery features"):
    rerank.re_ranking_features(qf, np.full_like(gf, np.nan))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_squared_convention_is_the_reference_on_squared_distances(metric):
  # squared=True (fast-reid's / torchreid's convention) = the reference given the
  # squared blocks; and it is not the as-given result.
  qf, gf, _, _ = _clustered(7, grid=1.0 if metric == "euclidean" else None)
  q_g, q_q, g_g = _blocks(qf, gf, metric)
  want = rerank_numpy.re_ranking(np.square(q_g), np.square(q_q), np.square(g_g))
  for symmetric in (False, True):
    got = rerank.re_ranking(
      q_g, q_q, g_g, row_chunk=37, query_rows=7, symmetric=symmetric, squared=True
    )
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  as_given = rerank.re_ranking(q_g, q_q, g_g)
  assert np.abs(as_given - want).max() > 1e-2
  from_features = rerank.re_ranking_features(qf, gf, metric=metric, squared=True)
  np.testing.assert_array_equal(
    from_features, rerank.re_ranking(q_g, q_q, g_g, symmetric=True, squared=True)
  )


def _fastreid_re_ranking():
  """fast-reid's own NumPy `re_ranking`, loaded from its file if fastreid is installed."""
  spec = importlib.util.find_spec("fastreid")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("fastreid not installed (python benchmarks/setup_peers.py)")
  path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "evaluation" / "rerank.py"
  module_spec = importlib.util.spec_from_file_location("fastreid_rerank_under_test", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.re_ranking


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_squared_convention_matches_fastreid(metric):
  # fast-reid's argsort is not stable: continuous features, so no ties.
  fastreid_re_ranking = _fastreid_re_ranking()
  qf, gf, _, _ = _clustered(8)
  q_g, q_q, g_g = _blocks(qf, gf, metric)
  want = fastreid_re_ranking(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3)
  got = rerank.re_ranking_features(qf, gf, metric=metric, squared=True)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
