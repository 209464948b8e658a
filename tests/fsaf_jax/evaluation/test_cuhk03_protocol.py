"""Tests of the CUHK03 classic single-shot protocol (torchreid's `eval_cuhk03`)."""

import warnings

import numpy as np
import pytest

from fsaf_jax.evaluation import cuhk03_protocol, metrics
from tests.reference import reid_metrics_numpy


def _problem(seed, m=60, ids=40, per_id=(1, 5), cams=2):
  rng = np.random.default_rng(seed)
  sizes = rng.integers(per_id[0], per_id[1] + 1, ids)
  g_pids = np.repeat(np.arange(1, ids + 1), sizes)
  g_cams = rng.integers(0, cams, g_pids.shape[0])
  q_pids = rng.integers(1, ids + 1, m)
  q_cams = rng.integers(0, cams, m)
  dist = (rng.integers(0, 40, (m, g_pids.shape[0])) / 8).astype(np.float32)  # with ties
  dist[q_pids[:, None] == g_pids[None, :]] -= 2.0  # some signal
  return dist, q_pids, g_pids, q_cams, g_cams


def test_draws_are_valid_and_reproducible():
  dist, q_pids, g_pids, q_cams, g_cams = _problem(0)
  d1 = cuhk03_protocol.draw_single_shot_galleries(q_pids, q_cams, g_pids, g_cams, seed=3)
  d2 = cuhk03_protocol.draw_single_shot_galleries(q_pids, q_cams, g_pids, g_cams, seed=3)
  np.testing.assert_array_equal(d1.chosen, d2.chosen)
  ids = np.unique(g_pids)
  assert d1.chosen.shape == (d1.queries.shape[0], 10, ids.shape[0])
  # One item per identity, in slot order; the own slot holds a positive (other camera).
  np.testing.assert_array_equal(g_pids[d1.chosen], np.broadcast_to(ids, d1.chosen.shape))
  q = d1.queries
  own_items = d1.chosen[np.arange(q.shape[0]), :, d1.own]
  assert np.all(g_cams[own_items] != q_cams[q][:, None])
  counts, _ = metrics.positive_lists(q_pids, q_cams, g_pids, g_cams)
  np.testing.assert_array_equal(q, np.nonzero(counts > 0)[0])


def test_draws_are_uniform():
  # Identity 1 has 4 items; over many draws each is chosen ~1/4 of the time.
  g_pids = np.array([1, 1, 1, 1, 2])
  g_cams = np.array([0, 1, 1, 1, 1])
  draws = cuhk03_protocol.draw_single_shot_galleries(
    np.array([2]), np.array([0]), g_pids, g_cams, num_repeats=8000, seed=0
  )
  freq = np.bincount(draws.chosen[0, :, 0], minlength=4) / 8000
  np.testing.assert_allclose(freq, 0.25, atol=0.02)


@pytest.mark.parametrize("seed", [0, 1])
def test_single_shot_cmc_matches_torchreid_loop_with_same_draws(seed):
  dist, q_pids, g_pids, q_cams, g_cams = _problem(seed)
  draws = cuhk03_protocol.draw_single_shot_galleries(q_pids, q_cams, g_pids, g_cams, seed=seed)
  got = cuhk03_protocol.single_shot_cmc(dist, draws, max_rank=20, query_chunk=7).mean(axis=0)
  want = reid_metrics_numpy.eval_cuhk03_single_shot_cmc(
    dist,
    q_pids,
    g_pids,
    q_cams,
    g_cams,
    {int(q): draws.chosen[v] for v, q in enumerate(draws.queries)},
    max_rank=20,
  )
  np.testing.assert_allclose(got, want, atol=1e-12)
  assert 0.1 < got[0] < 0.9 and got[4] > got[0]  # not a degenerate comparison


def test_one_image_per_identity_equals_market_cmc():
  # With one gallery image per identity every draw is the whole gallery.
  dist, q_pids, g_pids, q_cams, g_cams = _problem(2, per_id=(1, 1))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    market = metrics.evaluate(dist, q_pids, g_pids, q_cams, g_cams, max_rank=30)
    cuhk = cuhk03_protocol.evaluate_cuhk03(dist, q_pids, g_pids, q_cams, g_cams, max_rank=30)
  np.testing.assert_allclose(cuhk.cmc, market.cmc, atol=1e-12)
  assert (cuhk.mAP, cuhk.mINP, cuhk.num_valid) == (market.mAP, market.mINP, market.num_valid)


def test_rank1_matches_its_expectation_over_many_draws():
  # Expected single-shot Rank-1 of a query: average over its positives p (drawn
  # uniformly) of prod over other identities j of (1 - #items of j before p / n_j).
  dist, q_pids, g_pids, q_cams, g_cams = _problem(3, m=12, per_id=(2, 6))
  draws = cuhk03_protocol.draw_single_shot_galleries(
    q_pids, q_cams, g_pids, g_cams, num_repeats=4000, seed=1
  )
  got = cuhk03_protocol.single_shot_cmc(dist, draws, max_rank=1)[:, 0]
  assert np.sum((got > 0.2) & (got < 0.8)) >= 3  # probabilities, not certainties
  n = g_pids.shape[0]
  for v, q in enumerate(draws.queries):
    expected = []
    for p in np.nonzero((g_pids == q_pids[q]) & (g_cams != q_cams[q]))[0]:
      before = (dist[q] < dist[q, p]) | ((dist[q] == dist[q, p]) & (np.arange(n) < p))
      prob = 1.0
      for j in np.unique(g_pids[g_pids != q_pids[q]]):
        items = g_pids == j
        prob *= 1 - (before & items).sum() / items.sum()
      expected.append(prob)
    assert abs(got[v] - np.mean(expected)) < 0.03, (q, got[v], np.mean(expected))
