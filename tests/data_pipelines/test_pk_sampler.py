"""Tests of the P x K identity sampler (data_pipelines/pk_sampler.py)."""

import collections

import grain
import numpy as np
import pytest

from data_pipelines.pk_sampler import MODES, PKSampler, bot_batches_per_epoch
from tests.reference.market_shape import market_shaped_counts


def _labels(counts, seed=0):
  """person_id of every record: identity i has counts[i] records, shuffled."""
  labels = np.concatenate([np.full(n, i) for i, n in enumerate(counts)])
  return np.random.default_rng(seed).permutation(labels)


def _batches(sampler, num_batches):
  """Record indices of the first `num_batches` local batches, [num_batches, B_local]."""
  b = sampler.local_batch_size
  return np.array(
    [[sampler[j].record_key for j in range(i * b, (i + 1) * b)] for i in range(num_batches)]
  )


@pytest.mark.parametrize("mode", MODES)
def test_every_batch_holds_p_identities_with_k_distinct_images(mode):
  labels = _labels([5, 4, 9, 6, 4, 7, 8, 4, 5, 6, 4, 4])
  p, k = 4, 4
  sampler = PKSampler(labels, num_identities=p, num_instances=k, seed=3, mode=mode)
  assert sampler.batches_per_epoch == 3
  for batch in _batches(sampler, 3 * sampler.batches_per_epoch):
    batch_labels = labels[batch]
    # P identities, each K times, in consecutive runs of K.
    runs = batch_labels.reshape(p, k)
    assert (runs == runs[:, :1]).all()
    assert len(set(runs[:, 0])) == p
    # Every identity has >= K images here, so its K records are distinct.
    for run in batch.reshape(p, k):
      assert len(set(run)) == k


def test_epoch_visits_every_identity_once():
  labels = _labels([4] * 12)
  sampler = PKSampler(labels, num_identities=4, num_instances=2, seed=0, mode="uniform")
  assert sampler.batches_per_epoch == 3
  per_epoch = _batches(sampler, 6).reshape(2, -1)
  for epoch in per_epoch:
    ids = labels[epoch].reshape(-1, 2)[:, 0]
    assert sorted(ids) == list(range(12))
  # A new permutation every epoch.
  assert not np.array_equal(labels[per_epoch[0]], labels[per_epoch[1]])


def test_remainder_identities_skipped_per_epoch_but_all_seen_over_epochs():
  labels = _labels([3] * 10)  # 10 ids, P = 4: 2 batches per epoch, 2 ids left out
  sampler = PKSampler(labels, num_identities=4, num_instances=2, seed=1, mode="uniform")
  assert sampler.batches_per_epoch == 2
  seen = set()
  for epoch in _batches(sampler, 2 * 8).reshape(8, -1):
    ids = labels[epoch].reshape(-1, 2)[:, 0]
    assert len(ids) == len(set(ids)) == 8  # no identity twice within an epoch
    seen |= set(ids.tolist())
  assert seen == set(range(10))


@pytest.mark.parametrize("mode", MODES)
def test_same_seed_same_batches_different_seed_different(mode):
  labels = _labels([4, 6, 5, 4, 7, 4, 4, 5])
  kwargs = dict(num_identities=4, num_instances=4, mode=mode)
  a = _batches(PKSampler(labels, seed=7, **kwargs), 6)
  b = _batches(PKSampler(labels, seed=7, **kwargs), 6)
  c = _batches(PKSampler(labels, seed=8, **kwargs), 6)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


@pytest.mark.parametrize("mode", MODES)
def test_random_access_is_a_pure_function_of_position(mode):
  labels = _labels([4, 6, 5, 4, 7, 4, 4, 5])
  kwargs = dict(num_identities=4, num_instances=2, seed=5, mode=mode)
  sequential = _batches(PKSampler(labels, **kwargs), 8).ravel()
  fresh = PKSampler(labels, **kwargs)
  order = np.random.default_rng(0).permutation(len(sequential))
  for j in order:
    assert fresh[int(j)].record_key == sequential[j]
  # Same rng stream for the same position, different across positions.
  draws = [fresh[j].rng.integers(0, 2**62) for j in (3, 3, 4)]
  assert draws[0] == draws[1] != draws[2]


@pytest.mark.parametrize("mode", MODES)
def test_small_identities_sampled_with_replacement(mode):
  counts = [1, 2, 6, 6]
  labels = _labels(counts)
  sampler = PKSampler(labels, num_identities=4, num_instances=4, seed=0, mode=mode)
  pools = {i: set(np.flatnonzero(labels == i)) for i in range(4)}
  used = collections.defaultdict(set)
  for batch in _batches(sampler, 20):
    for run in batch.reshape(4, 4):
      identity = labels[run[0]]
      assert set(run) <= pools[identity]
      if counts[identity] >= 4:
        assert len(set(run)) == 4
      used[identity] |= set(run)
  assert used[0] == pools[0]  # the single image, repeated K times
  assert used[1] == pools[1]  # both images, drawn with replacement


def test_too_few_images_without_replacement_is_an_error():
  labels = _labels([1, 5, 5, 5])
  with pytest.raises(ValueError, match=r"K=4.*1 identities have fewer.*smallest: 1"):
    PKSampler(labels, num_identities=2, num_instances=4, seed=0, sample_with_replacement=False)
  PKSampler(labels, num_identities=2, num_instances=1, seed=0, sample_with_replacement=False)


def test_fewer_identities_than_p_is_an_error():
  with pytest.raises(ValueError, match="3 identities, fewer than P=4"):
    PKSampler(_labels([4, 4, 4]), num_identities=4, num_instances=2, seed=0)


@pytest.mark.parametrize("mode", MODES)
def test_process_shards_concatenate_to_the_global_batch(mode):
  labels = _labels([4, 6, 5, 4, 7, 4, 4, 5, 6, 4, 4, 4])
  kwargs = dict(num_identities=4, num_instances=3, seed=11, mode=mode)
  global_batches = _batches(PKSampler(labels, **kwargs), 7)
  shards = [PKSampler(labels, shard_index=s, shard_count=2, **kwargs) for s in range(2)]
  assert shards[0].local_batch_size == 6
  local = [_batches(s, 7) for s in shards]
  np.testing.assert_array_equal(np.concatenate(local, axis=1), global_batches)
  # Each process holds whole identities: labels of a process's batch are P/n runs of K.
  for batch in local[1]:
    runs = labels[batch].reshape(2, 3)
    assert (runs == runs[:, :1]).all() and runs[0, 0] != runs[1, 0]
  # The augmentation rng follows the global position, not the local one.
  g = shards[1].global_position(0)
  assert g == 6
  full = PKSampler(labels, **kwargs)
  assert shards[1][0].rng.integers(0, 2**62) == full[g].rng.integers(0, 2**62)
  assert shards[0][0].rng.integers(0, 2**62) != shards[1][0].rng.integers(0, 2**62)


def test_p_not_divisible_by_process_count_is_an_error():
  with pytest.raises(ValueError, match=r"P=4 .*process count 3"):
    PKSampler(_labels([4] * 8), num_identities=4, num_instances=2, seed=0, shard_count=3)


def test_works_as_a_grain_dataloader_sampler_with_checkpointing():
  labels = _labels([4, 6, 5, 4, 7, 4, 4, 5])
  source = [{"label": int(x), "record": i} for i, x in enumerate(labels)]
  sampler = PKSampler(labels, num_identities=4, num_instances=2, seed=2)
  loader = grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[grain.transforms.Batch(batch_size=8, drop_remainder=True)],
    worker_count=0,
    shard_options=grain.sharding.NoSharding(),
  )
  expected = _batches(sampler, 5)
  it = iter(loader)
  got = [next(it)["record"] for _ in range(2)]
  state = it.get_state()
  got += [next(it)["record"] for _ in range(3)]
  np.testing.assert_array_equal(np.array(got), expected)
  resumed = iter(loader)
  resumed.set_state(state)
  np.testing.assert_array_equal(np.array([next(resumed)["record"] for _ in range(3)]), expected[2:])


def test_unknown_mode_is_an_error():
  with pytest.raises(ValueError, match="config.input.sampler='random'"):
    PKSampler(_labels([4] * 8), num_identities=4, num_instances=2, seed=0, mode="random")


def test_bot_epoch_length_formula_by_hand():
  # K=4: max(n, 4) // 4 chunks = 1, 1, 1, 2, 2 (7 chunks); P=2: floor(7 / 2) = 3 batches.
  assert bot_batches_per_epoch([1, 2, 5, 8, 9], p=2, k=4) == 3
  sampler = PKSampler(_labels([1, 2, 5, 8, 9]), num_identities=2, num_instances=4, seed=0)
  assert sampler.batches_per_epoch == 3


def test_bot_epoch_on_market_shaped_labels():
  counts = market_shaped_counts()
  assert counts.sum() == 12936 and (counts.min(), counts.max()) == (2, 72)
  labels = np.repeat(np.arange(751), counts)
  p, k = 16, 4
  sampler = PKSampler(labels, num_identities=p, num_instances=k, seed=0)
  chunks = np.maximum(counts, k) // k  # BoT: K-chunks per identity and epoch
  assert sampler.batches_per_epoch == chunks.sum() // p
  assert 175 <= sampler.batches_per_epoch <= 205
  for epoch in range(3):
    plan = sampler.epoch_plan(epoch)
    assert plan.shape == (sampler.batches_per_epoch, p * k)
    runs = labels[plan].reshape(-1, k)
    assert (runs == runs[:, :1]).all()
    visits = np.bincount(runs[:, 0], minlength=751)
    # Every identity is visited once per K-chunk, i.e. in proportion to its image count,
    # except the fewer than P left with chunks when a pass can no longer fill a batch.
    assert np.sum(visits < chunks) < p
    # What the top-up pass adds on top of the chunks is a few batches at most.
    extra = np.maximum(visits - chunks, 0).sum()
    assert extra <= 4 * p, extra
    assert np.mean(visits == chunks) > 0.9
    assert np.corrcoef(visits, counts)[0, 1] > 0.95
    # Within an identity's visits of one epoch, its K-chunks are disjoint (drawn from
    # one shuffle) as long as it has K images or more and the top-up did not revisit it.
    for identity in np.flatnonzero((visits == chunks) & (counts >= k))[:200]:
      records = plan.reshape(-1, k)[runs[:, 0] == identity].ravel()
      assert len(set(records.tolist())) == len(records)
