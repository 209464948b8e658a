"""Tests of fsaf_jax/evaluation/rerank_sharded.py: re-ranking with the images split over
4 simulated devices against the per-row NumPy reference (`tests/reference/rerank_numpy.py`)
and against one device; the per-device memory of its kernels falls with the devices."""

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from fsaf_jax.evaluation import distance, rerank, rerank_sharded
from fsaf_jax.evaluation.inputs import EvaluationInputError
from fsaf_jax.evaluation.scoring import EvalFeatures, score_features
from fsaf_jax.evaluation.settings import EvalSettings
from tests.fsaf_jax.evaluation import sharded_eval_worker
from tests.reference import multiprocess, reid_problems, rerank_numpy


def _clustered(seed, nq=61, ng=203, ids=30, dim=16, noise=0.7, grid=None):
  """Query / gallery features around `ids` centres; Q + G = 264 is not a multiple of
  4 devices x 37-row chunks, G = 203 not a multiple of 4 (both get padded)."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((ids, dim))
  qf = centres[rng.integers(0, ids, nq)] + noise * rng.standard_normal((nq, dim))
  gf = centres[rng.integers(0, ids, ng)] + noise * rng.standard_normal((ng, dim))
  if grid:  # coarse grid: duplicate features, exactly tied distances across shards
    qf, gf = np.round(qf / grid) * grid, np.round(gf / grid) * grid
  return qf.astype(np.float32), gf.astype(np.float32)


def _meshes():
  devices = np.asarray(jax.devices())
  return Mesh(devices[:1], ("data",)), Mesh(devices, ("data",))


def _reference(qf, gf, metric, squared):
  pd = lambda a, b: np.asarray(distance.pairwise_distance(a, b, metric), np.float64)
  blocks = [pd(qf, gf), pd(qf, qf), pd(gf, gf)]
  if squared:
    blocks = [b * b for b in blocks]
  return rerank_numpy.re_ranking(*(b.astype(np.float32) for b in blocks))


@pytest.mark.parametrize(
  ("metric", "grid", "squared"),
  [
    ("cosine", None, False),
    # Slow: the same sharded code on euclidean grid features (exact ties across shards).
    pytest.param("euclidean", 1.0, False, marks=pytest.mark.slow),
    pytest.param("euclidean", 2.0, True, marks=pytest.mark.slow),
  ],
)
def test_equals_reference_and_one_device(metric, grid, squared, num_devices):
  assert num_devices == 4
  qf, gf = _clustered(0, grid=grid)
  if grid:  # many exact ties in the initial ranking, between images of different shards
    d = np.asarray(distance.pairwise_distance(np.concatenate([qf, gf]), np.concatenate([qf, gf])))
    s = np.sort(d, axis=1)
    assert (s[:, 1:22] == s[:, :21]).sum() > 100
  want = _reference(qf, gf, metric, squared)
  mesh1, mesh4 = _meshes()
  for row_chunk, query_rows in ((1024, 1024), (37, 7)):
    got = {}
    for mesh in (mesh1, mesh4):
      got[mesh.size] = rerank_sharded.re_ranking_features_sharded(
        qf,
        gf,
        mesh,
        metric=metric,
        squared=squared,
        row_chunk=row_chunk,
        query_rows=query_rows,
      )
      assert got[mesh.size].shape == (61, 203) and got[mesh.size].dtype == np.float32
      np.testing.assert_allclose(got[mesh.size], want, atol=1e-5, rtol=0)
    # A neighbour set decided differently moves distances by far more than rounding.
    np.testing.assert_allclose(got[4], got[1], atol=1e-6, rtol=0)
  one_device = rerank.re_ranking_features(qf, gf, metric=metric, squared=squared)
  np.testing.assert_allclose(got[4], one_device, atol=1e-6, rtol=0)
  # Re-ranking changed the distances (the comparison is not vacuous).
  assert np.abs(want - np.asarray(distance.pairwise_distance(qf, gf, metric))).max() > 0.1


@pytest.mark.parametrize(("k1", "k2", "lam"), [(5, 1, 0.5), (26, 3, 0.0)])
def test_other_parameters(k1, k2, lam):
  qf, gf = _clustered(1, nq=40, ng=150, grid=0.5)
  q_g, q_q, g_g = (
    np.asarray(distance.pairwise_distance(a, b, "euclidean"))
    for a, b in ((qf, gf), (qf, qf), (gf, gf))
  )
  want = rerank_numpy.re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
  got = rerank_sharded.re_ranking_features_sharded(
    qf, gf, _meshes()[1], metric="euclidean", k1=k1, k2=k2, lambda_value=lam, row_chunk=64
  )
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_fewer_images_per_device_than_neighbours():
  # A = 3 + 9 = 12 images, 3 per device: every device offers fewer than k1 + 1 = 21
  # candidates, and k1 + 1 is cut at A.
  qf, gf = _clustered(2, nq=3, ng=9, ids=4)
  want = _reference(qf, gf, "cosine", False)
  got = rerank_sharded.re_ranking_features_sharded(qf, gf, _meshes()[1])
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def _compiled_bytes(mesh, num_all, dim, rows):
  """Per-device argument and temporary bytes of the stage-1 and stage-5 kernels."""
  images = rerank_sharded._ShardedImages(mesh, "data", "cosine", False)
  split = jax.ShapeDtypeStruct((num_all, dim), jnp.float32, sharding=images.split)
  norms = jax.ShapeDtypeStruct((num_all,), jnp.float32, sharding=images.split)
  block = jax.ShapeDtypeStruct((rows, dim), jnp.float32, sharding=images.rep)
  block_norms = jax.ShapeDtypeStruct((rows,), jnp.float32, sharding=images.rep)
  rank = images.rank_block(21, num_all).lower(block, block_norms, split, norms).compile()
  return rank.memory_analysis()


def test_device_memory_falls_with_the_devices():
  # The features of all images and each block's distances are split: per device, the
  # kernel's arguments and temporaries are a quarter on 4 devices (up to the replicated
  # block of rows and the outputs).
  mesh1, mesh4 = _meshes()
  one = _compiled_bytes(mesh1, 32768, 64, 256)
  four = _compiled_bytes(mesh4, 32768, 64, 256)
  assert one.argument_size_in_bytes / four.argument_size_in_bytes > 3.5
  assert one.temp_size_in_bytes / four.temp_size_in_bytes > 3.0


def test_bad_inputs():
  qf, gf = _clustered(5, nq=10, ng=30)
  mesh = _meshes()[1]
  with pytest.raises(EvaluationInputError, match="not 'data'"):
    rerank_sharded.re_ranking_features_sharded(qf, gf, Mesh(np.asarray(jax.devices()), ("b",)))
  with pytest.raises(EvaluationInputError, match="k1=0"):
    rerank_sharded.re_ranking_features_sharded(qf, gf, mesh, k1=0)
  with pytest.raises(EvaluationInputError, match="differ in dimension"):
    rerank_sharded.re_ranking_features_sharded(qf, gf[:, :4], mesh)
  with pytest.raises(EvaluationInputError, match="gallery features"):
    rerank_sharded.re_ranking_features_sharded(qf, np.full_like(gf, np.nan), mesh)
  with pytest.raises(EvaluationInputError, match="Unknown metric"):
    rerank_sharded.re_ranking_features_sharded(qf, gf, mesh, metric="manhattan")
  # All images identical: no distance > 0 in any row.
  with pytest.raises(EvaluationInputError, match="image 0 of the 40"):
    rerank_sharded.re_ranking_features_sharded(
      np.ones_like(qf), np.ones_like(gf), mesh, metric="euclidean"
    )


def test_scoring_with_shard_gallery_reranks_over_the_mesh(monkeypatch):
  p = reid_problems.make_problem(7, num_gallery=403)
  features = EvalFeatures(p.q_feats, p.g_feats, *p.ids)
  plain = EvalSettings(metric="euclidean", max_rank=20, query_chunk=64, rerank=True)
  sharded = dataclasses.replace(plain, shard_gallery=True)
  mesh = _meshes()[1]
  calls = []
  sharded_fn = rerank_sharded.re_ranking_features_sharded

  def spy(*args, **kwargs):
    calls.append(args[2])
    return sharded_fn(*args, **kwargs)

  monkeypatch.setattr(rerank_sharded, "re_ranking_features_sharded", spy)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    one = score_features(features, plain)
    assert calls == []
    four = score_features(features, sharded, mesh=mesh)
  assert calls == [mesh]
  np.testing.assert_allclose(four.reranked, one.reranked, atol=1e-6, rtol=0)
  assert four.metrics_rerank is not None and one.metrics_rerank is not None
  np.testing.assert_allclose(four.metrics_rerank.cmc, one.metrics_rerank.cmc)
  assert abs(four.metrics_rerank.mAP - one.metrics_rerank.mAP) < 1e-6


@pytest.mark.slow  # the default set runs two processes in test_metrics' sharded gallery
def test_two_processes_rerank_like_one(tmp_path, num_devices):
  """2 jax.distributed processes x 2 CPU devices, the images split over all 4: each
  process gets this process's 4-device result (the same shard shapes, so the same
  distances). For euclidean on these grid features every distance is exact, so that is
  also the reference's, ties included; cosine products round by shape, which flips some
  of the grid's exact ties against the reference's blocks."""
  assert num_devices == 4
  cache_dir = jax.config.jax_compilation_cache_dir or str(tmp_path / "cache")
  worker = sharded_eval_worker.__file__
  multiprocess.launch_processes(worker, [tmp_path, 2, cache_dir, "rerank"], 2)
  results = [dict(np.load(tmp_path / f"p{pid}.npz")) for pid in range(2)]
  p = reid_problems.make_problem(**sharded_eval_worker.RERANK_PROBLEM)
  for metric in ("cosine", "euclidean"):
    here = rerank_sharded.re_ranking_features_sharded(
      p.q_feats, p.g_feats, _meshes()[1], metric=metric, row_chunk=64, query_rows=16
    )
    for result in results:
      np.testing.assert_array_equal(result[metric], here)
  want = _reference(p.q_feats, p.g_feats, "euclidean", False)
  np.testing.assert_allclose(results[0]["euclidean"], want, atol=1e-5, rtol=0)
