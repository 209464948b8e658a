"""P x K identity sampler for metric-learning batches, as a grain `Sampler`.

Every batch holds P identities with K images each (the triplet loss needs positives and
negatives in the batch). Two ways to make an epoch (`mode`):

* `'bot'` (default): BoT's `RandomIdentitySampler` (reid-strong-baseline; torchreid's
  is the same). Every identity's images are shuffled and cut into chunks of K (an
  identity with fewer than K images is first filled to K by sampling with replacement;
  the last `n mod K` images are dropped), then batches of P identities are drawn
  uniformly among the identities that still have chunks, each giving its next chunk,
  until fewer than P identities have chunks left. An identity with n images is thus
  visited `max(n, K) // K` times per epoch: in proportion to its image count.
  The epoch has a fixed length, which the lr schedule needs:

    batches_per_epoch = floor(sum_i (max(n_i, K) // K) / P)

  BoT's own `len(sampler) / batch_size` (for Market-1501's 12,936 images of 751
  identities, ~184). One pass of the draw above can end a few batches early, when the
  last identities with chunks left are fewer than P; the epoch is then topped up by a
  second pass (all identities shuffled and chunked again), as fast-reid's
  `NaiveIdentitySampler` continues into its next pass. That top-up is the one
  difference from BoT, whose epochs vary in length by those few batches.
* `'uniform'`: a random permutation of the identities cut into `num_ids // P` batches,
  so every identity is visited once per epoch (the `num_ids % P` left over differ from
  epoch to epoch); each visited identity gives K distinct random images (with
  replacement below K).

Sampling with replacement below K can be disallowed (`sample_with_replacement=False`:
such identities are then an error).

The record at a position is a pure function of `(seed, position)`: the sampler has no
mutable state, so an iterator's state is just its position and grain can checkpoint and
resume it exactly, with any number of worker processes.

Multi-host: process `s` of `n` gets `P / n` whole identities of every global batch (the
slots `s * P/n .. (s+1) * P/n - 1`), so the global batch is the concatenation of the
process-local batches in process order.
"""

import sys
import zlib
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines import errors

MODES = ("bot", "uniform")
# Independent random streams derived from the seed.
_PERMUTATION_STREAM = 0
_INSTANCE_STREAM = 1
_BOT_STREAM = 2
# Epoch plans kept in memory (a plan is [batches_per_epoch, P * K] record indices).
_CACHE_SIZE = 4


def bot_batches_per_epoch(counts: Sequence[int] | np.ndarray, p: int, k: int) -> int:
  """BoT's epoch length: floor(sum_i (max(n_i, K) // K) / P) batches of P x K.

  Args:
    counts: images per identity, int [num_ids].
    p: identities per batch.
    k: images per identity in a batch.
  """
  counts = np.asarray(counts, np.int64)
  return int(np.sum(np.maximum(counts, k) // k) // p)


def bot_epoch(
  members: Sequence[np.ndarray], p: int, k: int, num_batches: int, rng: np.random.Generator
) -> np.ndarray:
  """One epoch of BoT's `RandomIdentitySampler` (see the module docstring).

  Args:
    members: record indices of every identity (int arrays, each non-empty).
    p: identities per batch (at most the number of identities).
    k: images per identity in a batch.
    num_batches: batches to return; passes of the draw are chained until there are
      that many.
    rng: the epoch's random generator.

  Returns:
    int64 [num_batches, p * k] record indices; the K images of an identity are
    consecutive.
  """
  batches = []
  while len(batches) < num_batches:
    chunks = []  # per identity, its remaining K-chunks (the next one last)
    for records in members:
      if len(records) < k:
        records = rng.choice(records, k, replace=True)
      records = rng.permutation(records)
      usable = len(records) - len(records) % k
      chunks.append(list(records[:usable].reshape(-1, k)[::-1]))
    available = list(range(len(members)))
    while len(available) >= p and len(batches) < num_batches:
      picked = rng.choice(len(available), p, replace=False)
      identities = [available[i] for i in picked]
      batches.append(np.concatenate([chunks[i].pop() for i in identities]))
      for i in identities:
        if not chunks[i]:
          available.remove(i)
  return np.asarray(batches, np.int64).reshape(num_batches, p * k)


def _check_arguments(
  person_ids: np.ndarray,
  num_identities: int,
  num_instances: int,
  seed: Any,
  mode: str,
  num_epochs: int | None,
  shard_index: int,
  shard_count: int,
) -> None:
  """`PKSampler`'s argument checks (see its `__init__`): UserError for a setting of the
  config, ValueError for a caller's mistake."""
  if mode not in MODES:
    raise errors.UserError(f"config.input.sampler={mode!r}: must be one of {MODES}")
  if person_ids.ndim != 1 or person_ids.size == 0:
    raise ValueError(f"person_ids must be a non-empty 1-D sequence, got shape {person_ids.shape}")
  if not np.issubdtype(person_ids.dtype, np.integer):
    raise ValueError(f"person_ids must be integers, got dtype {person_ids.dtype}")
  if num_identities < 1 or num_instances < 1:
    raise errors.UserError(
      f"num_identities (P={num_identities}) and num_instances (K={num_instances}) must be positive"
    )
  if not isinstance(seed, int | np.integer) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f"invalid shard {shard_index} of {shard_count}")
  if num_identities % shard_count:
    raise errors.UserError(
      f"P x K sampling gives each process whole identities: P={num_identities} "
      f"identities per batch must be divisible by the process count {shard_count}"
    )


class PKSampler:
  """Grain sampler yielding P x K identity batches, one record per position.

  Positions are process-local: position `j` of shard `s` is record `j % B_local` of the
  shard's `j // B_local`-th batch, with `B_local = P / shard_count * K`. Within a batch the
  K images of an identity are consecutive.

  Attributes:
    mode: 'bot' or 'uniform' (see the module docstring).
    num_identities: P, identities per global batch.
    num_instances: K, images per identity.
    batches_per_epoch: global batches per epoch ('bot': BoT's formula; 'uniform':
      `num_ids // P`); each process sees the same count.
    local_batch_size: records per process-local batch, `P / shard_count * K`.
  """

  def __init__(
    self,
    person_ids: Sequence[int] | np.ndarray,
    *,
    num_identities: int = 16,
    num_instances: int = 4,
    seed: int,
    mode: str = "bot",
    num_epochs: int | None = None,
    sample_with_replacement: bool = True,
    shard_index: int = 0,
    shard_count: int = 1,
  ):
    """Builds the sampler.

    Args:
      person_ids: identity of every source record, int [num_records]; record `i` of the
        source has identity `person_ids[i]`. Any integers (need not be contiguous).
      num_identities: P.
      num_instances: K.
      seed: non-negative int; the batches are a pure function of it.
      mode: 'bot' (BoT's RandomIdentitySampler epoch) or 'uniform' (every identity
        once per epoch); `config.input.sampler`.
      num_epochs: epochs to yield; None = unbounded.
      sample_with_replacement: allow identities with fewer than K images (sampled with
        replacement). If False, such identities are an error.
      shard_index: this process's index (`jax.process_index()`).
      shard_count: number of processes (`jax.process_count()`); must divide P.
    """
    person_ids = np.asarray(person_ids)
    _check_arguments(
      person_ids, num_identities, num_instances, seed, mode, num_epochs, shard_index, shard_count
    )
    identities, inverse, counts = np.unique(person_ids, return_inverse=True, return_counts=True)
    if len(identities) < num_identities:
      raise errors.UserError(
        f"the source has {len(identities)} identities, fewer than "
        f"P={num_identities} identities per batch"
      )
    if not sample_with_replacement and counts.min() < num_instances:
      small = identities[counts < num_instances]
      raise errors.UserError(
        f"K={num_instances} images per identity, but {len(small)} identities have fewer "
        f"(smallest: {counts.min()} images; identities {small[:10].tolist()}"
        f"{' ...' if len(small) > 10 else ''}) and sampling with replacement is disabled: "
        "lower K or allow replacement"
      )
    order = np.argsort(inverse, kind="stable")
    self._members = tuple(np.split(order, np.cumsum(counts)[:-1]))  # record ids per identity

    self.mode = mode
    self.num_identities = num_identities
    self.num_instances = num_instances
    if mode == "bot":
      self.batches_per_epoch = bot_batches_per_epoch(counts, num_identities, num_instances)
    else:
      self.batches_per_epoch = len(identities) // num_identities
    self.local_batch_size = num_identities // shard_count * num_instances
    self._identities = identities
    self._seed = int(seed)
    self._num_epochs = num_epochs
    self._replace = sample_with_replacement
    self._shard_index = shard_index
    self._shard_count = shard_count
    self._num_records = len(person_ids)
    self._cache = {}
    self._person_ids_crc = zlib.crc32(np.ascontiguousarray(person_ids, np.int64).tobytes())

    local_per_epoch = self.batches_per_epoch * self.local_batch_size
    if num_epochs is None:
      self._length = (sys.maxsize // 2 // local_per_epoch) * local_per_epoch
    else:
      self._length = num_epochs * local_per_epoch

  @property
  def num_ids(self) -> int:
    """Number of distinct identities in the source."""
    return len(self._identities)

  @property
  def global_batch_size(self) -> int:
    """P * K."""
    return self.num_identities * self.num_instances

  def __len__(self) -> int:
    """Process-local positions (unbounded sampler: a huge multiple of an epoch)."""
    return self._length

  def fingerprint(self) -> str:
    """Everything that decides the global batch sequence (not the sharding)."""
    return (
      f"PKSampler(mode={self.mode}, num_records={self._num_records}, num_ids={self.num_ids}, "
      f"P={self.num_identities}, K={self.num_instances}, seed={self._seed}, "
      f"num_epochs={self._num_epochs}, replace={self._replace}, "
      f"person_ids_crc32={self._person_ids_crc})"
    )

  def __repr__(self) -> str:
    # grain validates a restored DataLoader state against repr(sampler).
    return f"{self.fingerprint()[:-1]}, shard={self._shard_index}/{self._shard_count})"

  def global_position(self, index: int) -> int:
    """Maps a process-local position to its position in the global batch sequence."""
    batch, offset = divmod(index, self.local_batch_size)
    return batch * self.global_batch_size + self._shard_index * self.local_batch_size + offset

  def _uniform_epoch(self, epoch: int) -> np.ndarray:
    """'uniform': a permutation of the identities, K random images for each visited one."""
    p, k = self.num_identities, self.num_instances
    rng = np.random.default_rng([self._seed, _PERMUTATION_STREAM, epoch])
    visited = rng.permutation(self.num_ids)[: self.batches_per_epoch * p]
    plan = np.empty((len(visited), k), np.int64)
    for row, identity in enumerate(visited):
      members = self._members[identity]
      rng = np.random.default_rng([self._seed, _INSTANCE_STREAM, epoch, int(identity)])
      plan[row] = rng.choice(members, k, replace=len(members) < k)
    return plan.reshape(self.batches_per_epoch, p * k)

  def epoch_plan(self, epoch: int) -> np.ndarray:
    """Record indices of every global batch of `epoch`, int64 [batches_per_epoch, P * K]."""
    if (plan := self._cache.get(epoch)) is None:
      if self.mode == "bot":
        rng = np.random.default_rng([self._seed, _BOT_STREAM, epoch])
        plan = bot_epoch(
          self._members, self.num_identities, self.num_instances, self.batches_per_epoch, rng
        )
      else:
        plan = self._uniform_epoch(epoch)
      if len(self._cache) >= _CACHE_SIZE:  # pure-function memo: clearing only costs time
        self._cache.clear()
      self._cache[epoch] = plan
    return plan

  def record_at(self, position: int) -> int:
    """Source record index at a *global* position (pure function of seed and position)."""
    epoch, rem = divmod(position, self.batches_per_epoch * self.global_batch_size)
    batch, slot = divmod(rem, self.global_batch_size)
    return int(self.epoch_plan(epoch)[batch, slot])

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    """Returns the record at process-local position `index`.

    `record_key` is the source record index; `rng` is a generator seeded from
    `(seed, global position)` for the random augmentations of that record, so they do not
    depend on the process count and differ between processes.
    """
    if not 0 <= index < self._length:
      raise IndexError(f"position {index} out of range [0, {self._length})")
    position = self.global_position(index)
    rng = np.random.Generator(np.random.Philox(key=np.array([position, self._seed], np.uint64)))
    return grain.RecordMetadata(index=index, record_key=self.record_at(position), rng=rng)
