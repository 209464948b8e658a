"""Tests of the Market-1501 metrics: a hand-computed case and parity with the NumPy loop.

The reference is `tests/reference/reid_metrics_numpy.py` (torchreid's per-query loop
with a stable argsort); problems come from `tests/reference/reid_problems.py`.
"""

import pathlib
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from fsaf_jax.evaluation import distance, metrics
from fsaf_jax.evaluation.inputs import EvaluationInputError
from tests.reference import multiprocess, reid_metrics_numpy, reid_problems

# Hand-computed example: 7 gallery items, 4 queries (3 with a positive).
#   gallery index:  0    1    2    3    4    5    6
#   pid:            1    1    2    2    3    0   -1     (0 = distractor, -1 = junk)
#   camera:         0    1    0    1    1    1    0
SHARDED_WORKER = pathlib.Path(__file__).with_name("sharded_eval_worker.py")
G_PIDS = np.array([1, 1, 2, 2, 3, 0, -1])
G_CAMS = np.array([0, 1, 0, 1, 1, 1, 0])
Q_PIDS = np.array([1, 2, 3, 4])
Q_CAMS = np.array([0, 2, 0, 0])
DISTMAT = np.array(
  [
    # q0 (pid 1, cam 0): g0 is removed (same pid, same cam). Filtered ranking:
    #   g2 0.2, g5 0.3, g3 0.4, g1 0.5 (positive), g4 0.6, g6 junk dropped.
    #   Positive at rank 4: AP = 1/4, INP = 1/4, first hit = 4.
    [0.1, 0.5, 0.2, 0.4, 0.6, 0.3, 0.0],
    # q1 (pid 2, cam 2): nothing removed; positives g2, g3. g3 and g5 tie at 0.5:
    #   ties go by gallery index, so g3 (3) ranks before g5 (5). Ranking:
    #   g2 0.1 (+), g4 0.2, g0 0.3, g3 0.5 (+), g5 0.5, g1 0.6.
    #   Positives at ranks 1 and 4: AP = (1/1 + 2/4) / 2 = 0.75, INP = 2/4 = 0.5, first = 1.
    #   (With g5 before g3, AP would be (1 + 2/5) / 2 = 0.7.)
    [0.3, 0.6, 0.1, 0.5, 0.2, 0.5, 0.9],
    # q2 (pid 3, cam 0): positive g4 (cam 1). Junk g6 (0.01) is dropped. Ranking:
    #   g5 0.05, g4 0.5 (+), g3 0.6, g2 0.7, g1 0.8, g0 0.9.
    #   Positive at rank 2: AP = 1/2, INP = 1/2, first = 2.
    [0.9, 0.8, 0.7, 0.6, 0.5, 0.05, 0.01],
    # q3 (pid 4): no gallery item has pid 4 -> skipped.
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
  ],
  np.float32,
)
# First hits at ranks 4, 1, 2 -> Rank-1 = 1/3, Rank-2 = Rank-3 = 2/3, Rank-4.. = 1.
HAND_CMC = np.array([1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
HAND_MAP = (0.25 + 0.75 + 0.5) / 3  # = 0.5
HAND_MINP = (0.25 + 0.5 + 0.5) / 3  # = 0.41666...


def _evaluate_quietly(*args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return metrics.evaluate(*args, **kwargs)


@pytest.mark.parametrize("query_chunk", [1, 2, 256])
def test_hand_computed(query_chunk):
  with pytest.warns(UserWarning, match="1 of 4 queries have no positive"):
    r = metrics.evaluate(
      DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, query_chunk=query_chunk
    )
  np.testing.assert_allclose(r.cmc, HAND_CMC, atol=1e-12)
  assert r.mAP == pytest.approx(HAND_MAP, abs=1e-12)
  assert r.mINP == pytest.approx(HAND_MINP, abs=1e-12)
  assert (r.num_valid, r.num_skipped) == (3, 1)


def test_hand_computed_reference_agrees():
  # The reference loop must give the same hand-computed numbers (it is the parity oracle).
  cmc, m_ap, m_inp, valid, skipped = reid_metrics_numpy.eval_market1501(
    DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5
  )
  np.testing.assert_allclose(cmc, HAND_CMC, atol=1e-12)
  assert (m_ap, m_inp, valid, skipped) == pytest.approx((HAND_MAP, HAND_MINP, 3, 1))


def test_as_dict_and_rank():
  r = _evaluate_quietly(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
  d = r.as_dict()
  assert d["rank1"] == pytest.approx(1 / 3) and d["rank5"] == pytest.approx(1.0)
  assert "rank10" not in d  # beyond the CMC length
  assert d["mAP"] == pytest.approx(HAND_MAP) and d["num_skipped"] == 1
  assert d["cmc"] == pytest.approx(list(HAND_CMC))
  assert r.rank(4) == 1.0
  with pytest.raises(ValueError, match="Rank-6"):
    r.rank(6)


def test_positive_lists_brute_force():
  p = reid_problems.make_problem(0, num_query=50, num_gallery=300, num_ids=40)
  counts, table = metrics.positive_lists(p.q_pids, p.q_camids, p.g_pids, p.g_camids)
  for q in range(50):
    want = np.nonzero((p.g_pids == p.q_pids[q]) & (p.g_camids != p.q_camids[q]) & (p.g_pids >= 0))[
      0
    ]
    assert counts[q] == want.size
    np.testing.assert_array_equal(table[q, : want.size], want)
    assert np.all(table[q, want.size :] == 300)


def _check_parity(result, reference):
  cmc, m_ap, m_inp, valid, skipped = reference
  np.testing.assert_allclose(result.cmc, cmc, atol=1e-6, rtol=0)
  assert abs(result.mAP - m_ap) <= 1e-6
  assert abs(result.mINP - m_inp) <= 1e-6
  assert (result.num_valid, result.num_skipped) == (valid, skipped)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_parity_with_reference(seed, metric):
  p = reid_problems.make_problem(seed)
  dist = np.asarray(distance.pairwise_distance(p.q_feats, p.g_feats, metric))
  # The problem has what the protocol must handle.
  assert reid_problems.count_exact_ties(dist) > 1000
  assert (p.g_pids == 0).sum() > 100 and (p.g_pids == -1).sum() > 20
  ref = reid_metrics_numpy.eval_market1501(dist, *p.ids, max_rank=50)
  assert ref[4] > 10  # queries without a positive
  for chunk in (7, 64, 400, 1000):  # 7 and 64 do not divide M = 400 (or the valid count)
    _check_parity(_evaluate_quietly(dist, *p.ids, max_rank=50, query_chunk=chunk), ref)
  # On the device already.
  _check_parity(_evaluate_quietly(jnp.asarray(dist), *p.ids, max_rank=50, query_chunk=64), ref)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_features_path_equals_distmat_path(metric):
  p = reid_problems.make_problem(2)
  dist = np.asarray(distance.pairwise_distance(p.q_feats, p.g_feats, metric))
  ref = reid_metrics_numpy.eval_market1501(dist, *p.ids, max_rank=50)
  for chunk in (33, 512):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      r = metrics.evaluate_features(
        p.q_feats, p.g_feats, *p.ids, metric=metric, max_rank=50, query_chunk=chunk
      )
    _check_parity(r, ref)


def test_heavy_ties_and_many_positives():
  # Distances on a 5-level grid: almost everything ties, so the index rule decides.
  rng = np.random.default_rng(3)
  m, n = 120, 900
  q_pids = rng.integers(1, 6, m)  # few identities: up to ~180 positives per query
  g_pids = rng.integers(0, 6, n)
  q_cams, g_cams = rng.integers(0, 6, m), rng.integers(0, 6, n)
  dist = (rng.integers(0, 5, (m, n)) / 4).astype(np.float32)
  dist[rng.random((m, n)) < 0.5] *= -1  # negative distances, and -0.0 tied with 0.0
  ref = reid_metrics_numpy.eval_market1501(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50)
  for chunk in (17, 120):
    _check_parity(_evaluate_quietly(dist, q_pids, g_pids, q_cams, g_cams, query_chunk=chunk), ref)


def test_short_gallery_cuts_cmc_with_warning():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    r = metrics.evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=50)
  assert any("max_rank=50 exceeds the gallery size 7" in str(w.message) for w in caught)
  assert r.cmc.shape == (7,)
  np.testing.assert_allclose(r.cmc[:5], HAND_CMC)


def test_bad_input_messages():
  ids = (Q_PIDS, G_PIDS, Q_CAMS, G_CAMS)
  kw = {"max_rank": 5}
  with pytest.raises(EvaluationInputError, match=r"distmat has shape \(4, 6\).*4 query and 7"):
    metrics.evaluate(DISTMAT[:, :6], *ids)
  with pytest.raises(EvaluationInputError, match=r"query_camids has 3 entries.*\(3,\)"):
    metrics.evaluate(DISTMAT, Q_PIDS, G_PIDS, Q_CAMS[:3], G_CAMS)
  with pytest.raises(EvaluationInputError, match="query set is empty"):
    metrics.evaluate(DISTMAT[:0], Q_PIDS[:0], G_PIDS, Q_CAMS[:0], G_CAMS)
  with pytest.raises(EvaluationInputError, match="gallery set is empty"):
    metrics.evaluate(DISTMAT[:, :0], Q_PIDS, G_PIDS[:0], Q_CAMS, G_CAMS[:0])
  bad = DISTMAT.copy()
  bad[1, 2] = np.nan
  with pytest.raises(EvaluationInputError, match="non-finite"), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    metrics.evaluate(bad, *ids, **kw)
  with pytest.raises(EvaluationInputError, match="None of the 4 queries has a positive"):
    metrics.evaluate(DISTMAT, Q_PIDS + 100, G_PIDS, Q_CAMS, G_CAMS, **kw)
  with pytest.raises(EvaluationInputError, match="query_pids must hold integer ids; entry 1"):
    metrics.evaluate(DISTMAT, np.array([1.0, 2.5, 3.0, 4.0]), G_PIDS, Q_CAMS, G_CAMS)
  with pytest.raises(EvaluationInputError, match="max_rank must be >= 1"):
    metrics.evaluate(DISTMAT, *ids, max_rank=0)


def test_features_bad_input_messages():
  p = reid_problems.make_problem(0, num_query=20, num_gallery=60, num_ids=10)
  qf = p.q_feats.copy()
  qf[4, 1] = np.inf
  with pytest.raises(EvaluationInputError, match=r"query features \(shape \(20, 8\)\).*\[4, 1\]"):
    metrics.evaluate_features(qf, p.g_feats, *p.ids)
  with pytest.raises(EvaluationInputError, match="differ in dimension"):
    metrics.evaluate_features(p.q_feats, p.g_feats[:, :4], *p.ids)
  with pytest.raises(EvaluationInputError, match=r"query features \(19, 8\)"):
    metrics.evaluate_features(p.q_feats[:19], p.g_feats, *p.ids)
  with pytest.raises(EvaluationInputError, match="Unknown metric"):
    metrics.evaluate_features(p.q_feats, p.g_feats, *p.ids, metric="manhattan")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_sharded_gallery_equals_one_device(metric, num_devices):
  # Gallery split over the 4 simulated devices (2,001 items: padded to 4 x 501) and over
  # a 1-device mesh. Each device's product [C, D] x [D, 501] may round differently
  # from the one-device [C, D] x [D, 2001] (XLA picks kernels by shape), which flips
  # exact ties: the 4-device figures are those of the reference on the distances the
  # shards compute, and equal one device's wherever the products are exact
  # (euclidean on these grid features).
  import jax
  from jax.sharding import Mesh

  assert num_devices == 4
  p = reid_problems.make_problem(4, num_gallery=2001)
  q_prep = distance.prepare(jnp.asarray(p.q_feats), metric)
  g_prep = distance.prepare(jnp.asarray(np.concatenate([p.g_feats, np.zeros((3, 8))])), metric)
  shard_dist = np.concatenate(
    [
      np.asarray(
        distance.distance_from_prepared(
          q_prep, distance.Prepared(*(x[s : s + 501] for x in g_prep)), metric
        )
      )
      for s in range(0, 2004, 501)
    ],
    axis=1,
  )[:, :2001]
  assert reid_problems.count_exact_ties(shard_dist) > 1000
  ref = reid_metrics_numpy.eval_market1501(shard_dist, *p.ids, max_rank=50)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    single = metrics.evaluate_features(p.q_feats, p.g_feats, *p.ids, metric=metric)
    for chunk in (37, 256):
      mesh1 = Mesh(np.asarray(jax.devices()[:1]), ("data",))
      one = metrics.evaluate_features_sharded(
        p.q_feats, p.g_feats, *p.ids, mesh1, metric=metric, query_chunk=chunk
      )
      np.testing.assert_array_equal(one.cmc, single.cmc)
      assert (one.mAP, one.mINP) == (single.mAP, single.mINP)
      mesh4 = Mesh(np.asarray(jax.devices()), ("data",))
      four = metrics.evaluate_features_sharded(
        p.q_feats, p.g_feats, *p.ids, mesh4, metric=metric, query_chunk=chunk
      )
      _check_parity(four, ref)
      if metric == "euclidean":
        np.testing.assert_array_equal(four.cmc, single.cmc)
        assert (four.mAP, four.mINP) == (single.mAP, single.mINP)


def test_sharded_bad_axis():
  import jax
  from jax.sharding import Mesh

  mesh = Mesh(np.asarray(jax.devices()), ("batch",))
  with pytest.raises(EvaluationInputError, match="not 'data'"):
    metrics.evaluate_features_sharded(
      np.ones((7, 4)), np.ones((7, 4)), Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, mesh
    )


def test_sharded_gallery_over_two_processes_equals_one_process(tmp_path, num_devices):
  """2 jax.distributed processes x 2 CPU devices, the gallery split over all 4: each
  process gets the figures of this process's 4-device mesh (the same shard shapes,
  so the same distances), which for euclidean equal one device's."""
  import jax
  from jax.sharding import Mesh

  cache_dir = jax.config.jax_compilation_cache_dir or str(tmp_path / "cache")
  multiprocess.launch_processes(SHARDED_WORKER, [tmp_path, 2, cache_dir, "metrics"], 2)
  results = [dict(np.load(tmp_path / f"p{pid}.npz")) for pid in range(2)]
  p = reid_problems.make_problem(4, num_gallery=2001)
  mesh4 = Mesh(np.asarray(jax.devices()), ("data",))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for metric in ("cosine", "euclidean"):
      here = metrics.evaluate_features_sharded(
        p.q_feats, p.g_feats, *p.ids, mesh4, metric=metric, query_chunk=37
      )
      single = metrics.evaluate_features(p.q_feats, p.g_feats, *p.ids, metric=metric)
      for result in results:
        np.testing.assert_array_equal(result[f"{metric}/cmc"], here.cmc)
        np.testing.assert_array_equal(result[f"{metric}/map_minp"], [here.mAP, here.mINP])
        if metric == "euclidean":
          np.testing.assert_array_equal(result[f"{metric}/cmc"], single.cmc)
          np.testing.assert_array_equal(result[f"{metric}/map_minp"], [single.mAP, single.mINP])
