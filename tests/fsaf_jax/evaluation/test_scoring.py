"""Tests of fsaf_jax/evaluation/scoring.py: the gallery split over the mesh when
`config.eval.shard_gallery` gives one device's figures (exact distances)."""

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from fsaf_jax.evaluation import metrics
from fsaf_jax.evaluation.scoring import EvalFeatures, score_features
from fsaf_jax.evaluation.settings import EvalSettings
from tests.reference import reid_metrics_numpy, reid_problems


def test_shard_gallery_gives_one_devices_figures(num_devices, monkeypatch):
  assert num_devices == 4
  p = reid_problems.make_problem(7, num_gallery=1003)
  features = EvalFeatures(p.q_feats, p.g_feats, *p.ids)
  # Euclidean on grid features: every product is exact, so the shards' distances are
  # the one-device ones and the figures must be equal, ties included.
  plain = EvalSettings(metric="euclidean", max_rank=20, query_chunk=64)
  sharded = dataclasses.replace(plain, shard_gallery=True)
  mesh = Mesh(np.asarray(jax.devices()), ("data",))
  meshes = []
  sharded_fn = metrics.evaluate_features_sharded

  def spy(*args, **kwargs):
    meshes.append(args[6])
    return sharded_fn(*args, **kwargs)

  monkeypatch.setattr(metrics, "evaluate_features_sharded", spy)
  one = score_features(features, plain)
  assert meshes == []
  four = score_features(features, sharded, mesh=mesh)
  assert meshes == [mesh]  # the gallery went over the 4 devices
  np.testing.assert_array_equal(four.metrics.cmc, one.metrics.cmc)
  assert (four.metrics.mAP, four.metrics.mINP) == (one.metrics.mAP, one.metrics.mINP)
  assert four.flat() == one.flat()
  # And both are the brute-force reference's.
  dist = ((p.q_feats[:, None, :] - p.g_feats[None, :, :]) ** 2).sum(-1)
  ref = reid_metrics_numpy.eval_market1501(dist, *p.ids, max_rank=20)
  np.testing.assert_allclose(one.metrics.cmc, ref[0], atol=1e-12)
  assert abs(one.metrics.mAP - ref[1]) < 1e-12
  assert isinstance(one.metrics, metrics.RankMetrics)
