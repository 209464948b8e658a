"""P x K identity sampler for metric-learning batches, as a grain `Sampler`.

Every batch holds P identities with K images each (the triplet loss needs positives and
negatives in the batch). An *epoch* is a random permutation of the identities cut into
`num_ids // P` batches, so every identity is visited once per epoch; the remaining
`num_ids % P` identities at the end of that epoch's permutation are left out of it (a
different random set each epoch, as torchreid / fast-reid drop their incomplete batch).
Each visited identity contributes K distinct images, drawn at random; an identity with
fewer than K images is sampled with replacement (unless that is disallowed, then it is an
error).

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

import grain
import numpy as np

# Independent random streams derived from the seed.
_PERMUTATION_STREAM = 0
_INSTANCE_STREAM = 1
# Memoised permutations / instance draws (about two epochs' worth at Market scale).
_CACHE_SIZE = 4096


class PKSampler:
  """Grain sampler yielding P x K identity batches, one record per position.

  Positions are process-local: position `j` of shard `s` is record `j % B_local` of the
  shard's `j // B_local`-th batch, with `B_local = P / shard_count * K`. Within a batch the
  K images of an identity are consecutive.

  Attributes:
    num_identities: P, identities per global batch.
    num_instances: K, images per identity.
    batches_per_epoch: `num_ids // P` (global batches; each process sees the same count).
    local_batch_size: records per process-local batch, `P / shard_count * K`.
  """

  def __init__(
    self,
    person_ids: Sequence[int] | np.ndarray,
    *,
    num_identities: int = 16,
    num_instances: int = 4,
    seed: int,
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
      num_epochs: epochs to yield; None = unbounded.
      sample_with_replacement: allow identities with fewer than K images (sampled with
        replacement). If False, such identities are an error.
      shard_index: this process's index (`jax.process_index()`).
      shard_count: number of processes (`jax.process_count()`); must divide P.
    """
    person_ids = np.asarray(person_ids)
    if person_ids.ndim != 1 or person_ids.size == 0:
      raise ValueError(f"person_ids must be a non-empty 1-D sequence, got shape {person_ids.shape}")
    if not np.issubdtype(person_ids.dtype, np.integer):
      raise ValueError(f"person_ids must be integers, got dtype {person_ids.dtype}")
    if num_identities < 1 or num_instances < 1:
      raise ValueError(
        f"num_identities (P={num_identities}) and num_instances (K={num_instances}) "
        "must be positive"
      )
    if not isinstance(seed, int | np.integer) or seed < 0:
      raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if num_epochs is not None and num_epochs < 1:
      raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")
    if shard_count < 1 or not 0 <= shard_index < shard_count:
      raise ValueError(f"invalid shard {shard_index} of {shard_count}")
    if num_identities % shard_count:
      raise ValueError(
        f"P x K sampling gives each process whole identities: P={num_identities} "
        f"identities per batch must be divisible by the process count {shard_count}"
      )

    identities, inverse, counts = np.unique(person_ids, return_inverse=True, return_counts=True)
    if len(identities) < num_identities:
      raise ValueError(
        f"the source has {len(identities)} identities, fewer than "
        f"P={num_identities} identities per batch"
      )
    if not sample_with_replacement and counts.min() < num_instances:
      small = identities[counts < num_instances]
      raise ValueError(
        f"K={num_instances} images per identity, but {len(small)} identities have fewer "
        f"(smallest: {counts.min()} images; identities {small[:10].tolist()}"
        f"{' ...' if len(small) > 10 else ''}) and sampling with replacement is disabled: "
        "lower K or allow replacement"
      )
    order = np.argsort(inverse, kind="stable")
    self._members = tuple(np.split(order, np.cumsum(counts)[:-1]))  # record ids per identity

    self.num_identities = num_identities
    self.num_instances = num_instances
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
      f"PKSampler(num_records={self._num_records}, num_ids={self.num_ids}, "
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

  def _permutation(self, epoch: int) -> np.ndarray:
    """Order in which the identities (indices into `_identities`) are visited in `epoch`."""
    if (perm := self._cache.get(epoch)) is None:
      rng = np.random.default_rng([self._seed, _PERMUTATION_STREAM, epoch])
      perm = rng.permutation(self.num_ids)
      self._cache_put(epoch, perm)
    return perm

  def _instances(self, epoch: int, identity: int) -> np.ndarray:
    """The K source records of `identity` (an index into `_identities`) in `epoch`."""
    if (chosen := self._cache.get((epoch, identity))) is None:
      members = self._members[identity]
      rng = np.random.default_rng([self._seed, _INSTANCE_STREAM, epoch, identity])
      chosen = rng.choice(members, self.num_instances, replace=len(members) < self.num_instances)
      self._cache_put((epoch, identity), chosen)
    return chosen

  def _cache_put(self, key, value) -> None:
    # Pure-function memo: clearing it only costs recomputation.
    if len(self._cache) >= _CACHE_SIZE:
      self._cache.clear()
    self._cache[key] = value

  def record_at(self, position: int) -> int:
    """Source record index at a *global* position (pure function of seed and position)."""
    epoch, rem = divmod(position, self.batches_per_epoch * self.global_batch_size)
    batch, rem = divmod(rem, self.global_batch_size)
    slot, instance = divmod(rem, self.num_instances)
    identity = int(self._permutation(epoch)[batch * self.num_identities + slot])
    return int(self._instances(epoch, identity)[instance])

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
