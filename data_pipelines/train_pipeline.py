"""The training input pipeline on grain: P x K identity batches, sharded over the mesh.

Written against any random-access source (`__len__`, `__getitem__`) of records
(`data_pipelines.source_records`), e.g. `data_pipelines.datasets.source.load_source(...)`.

`create_train_iterator`: P x K identity batches (`pk_sampler.PKSampler`), decoded and
augmented (`augment.train_transforms`) in grain, delivered as global `jax.Array`s sharded
over the mesh axis `'data'` and prefetched onto the devices.

The batch is the grain element: the P x K sampler positions are grouped into batches in a
`MapDataset` *before* the worker processes split the work, so a batch's content is a pure
function of `(seed, batch number)` whatever the worker / thread count. The iterator state
is therefore the number of batches consumed (plus a fingerprint of the sampler). Save it
with the model through orbax and grain's checkpoint handler:

    import grain, orbax.checkpoint as ocp
    it = create_train_iterator(source, config, mesh, seed=config.seed)
    mngr = ocp.CheckpointManager(workdir / 'checkpoints')
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(train_state),
        data_iter=grain.checkpoint.CheckpointSave(it)))
    ...
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_train_state),
        data_iter=grain.checkpoint.CheckpointRestore(it)))  # calls it.set_state(...)

The handler writes one `process_{i}-of-{n}.json` per JAX process; `it` then yields
exactly the batch an uninterrupted run would have yielded next. The state can also be
restored with a different worker count or process count (the batch number is global);
the training checkpoints (`fsaf_jax.training.checkpoint`) store it once, as one JSON item,
so that any process count finds it.

The evaluation pipeline is `data_pipelines.eval_pipeline`.
"""

import collections
import json
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from data_pipelines import augment, errors, grain_workers, source_records
from data_pipelines.pk_sampler import PKSampler

_STATE_VERSION = 1
# Records read per call when collecting the identity labels of a source.
_LABEL_READ_CHUNK = 1024


def read_labels(source: Any) -> tuple[np.ndarray, np.ndarray]:
  """Identity and camera of every record of a random-access source.

  Reads each record once (with the source's batched `__getitems__` when it has one).

  Returns:
    (person_ids int64 [N], camera_ids int64 [N]) in source order.
  """
  n = len(source)
  person_ids = np.empty(n, np.int64)
  camera_ids = np.empty(n, np.int64)
  get_many = getattr(source, "__getitems__", None)
  for start in range(0, n, _LABEL_READ_CHUNK):
    indices = range(start, min(n, start + _LABEL_READ_CHUNK))
    records = get_many(list(indices)) if get_many else [source[i] for i in indices]
    for i, record in zip(indices, records, strict=True):
      try:
        person_ids[i] = record["person_id"]
        camera_ids[i] = record["camera_id"]
      except (KeyError, TypeError) as e:
        raise ValueError(
          f"record {i} of the source has no integer 'person_id' / 'camera_id': "
          f"keys {sorted(record) if isinstance(record, dict) else type(record)}"
        ) from e
  return person_ids, camera_ids


class ReadTrainRecord(grain.transforms.Map):
  """Sampler position -> decoded, augmented training record.

  Element `j` is the source record at sampler position `j`, as a dict `image` uint8
  [H, W, 3], `label` int32 (the source's `person_id`), `camera_id` int32, `index` int64
  (source record index). The random transforms draw from the rng the sampler derives
  from `(seed, global position)`.
  """

  def __init__(self, source: Any, sampler: PKSampler, transforms: Sequence[Any]):
    self._source = source
    self._sampler = sampler
    self._transforms = tuple(transforms)

  def map(self, position: int) -> dict[str, np.ndarray]:
    metadata = self._sampler[position]
    record = self._source[metadata.record_key]
    element = {
      "image": record["image"],
      "file_name": source_records.file_name(record),
    }
    for transform in self._transforms:
      if isinstance(transform, grain.transforms.RandomMap):
        element = transform.random_map(element, metadata.rng)
      else:
        element = transform.map(element)
    return {
      "image": element["image"],
      "label": np.int32(record["person_id"]),
      "camera_id": np.int32(record["camera_id"]),
      "index": np.int64(metadata.record_key),
    }


def _check_batch_divisibility(global_batch: int, num_devices: int, num_processes: int, p: int):
  if global_batch % num_devices:
    raise errors.UserError(
      f"global batch P x K = {global_batch} must be divisible by the device count "
      f"{num_devices} (data-parallel over mesh axis 'data'): change "
      "config.input.num_identities / num_instances"
    )
  if p % num_processes:
    raise errors.UserError(
      f"each process gets whole identities: P = config.input.num_identities = {p} must "
      f"be divisible by the process count {num_processes}"
    )


class TrainIterator(Iterator[dict[str, jax.Array]]):
  """Infinite iterator of global training batches with checkpointable state.

  Yields dicts of global `jax.Array`s sharded on axis 0 over the mesh axis `'data'`:
  `image` uint8 [B, H, W, 3], `label` int32 [B], `camera_id` int32 [B], `index` [B]
  (source record indices; int64 on the host, int32 on the device unless
  `jax_enable_x64`: exact, sources are checked to have < 2**31 records). `B = P * K`;
  process `i` of `n` provides the identities `i * P/n .. (i+1) * P/n - 1` of every global
  batch, which are rows `i * B/n .. (i+1) * B/n - 1` when the mesh orders its devices by
  process (`fsaf_jax.core.mesh.make_mesh` does). `prefetch` batches beyond the one
  returned are already on their way to the devices.

  `get_state()` / `set_state()` (JSON bytes, the interface grain's orbax
  `CheckpointHandler` uses) hold the number of batches consumed: restoring continues with
  the exact next batch.
  """

  def __init__(
    self,
    batches: grain.MapDataset,
    *,
    sampler: PKSampler,
    sharding: jax.sharding.Sharding,
    num_workers: int,
    num_threads: int,
    prefetch: int,
  ):
    self._batches = batches
    self._sampler = sampler
    self._sharding = sharding
    self._num_workers = num_workers
    self._num_threads = num_threads
    self._prefetch = prefetch
    self._position = 0  # batches returned to the caller
    self._host_iterator = None
    self._device_buffer = collections.deque()

  @property
  def sampler(self) -> PKSampler:
    return self._sampler

  @property
  def batches_per_epoch(self) -> int:
    """Global batches of one sampler epoch (`PKSampler.batches_per_epoch`)."""
    return self._sampler.batches_per_epoch

  def _start(self) -> None:
    read = grain.ReadOptions(num_threads=self._num_threads, prefetch_buffer_size=self._num_threads)
    ds = self._batches[self._position :].to_iter_dataset(read)
    if self._num_workers:
      grain_workers.ensure_absl_flags_parsed()
      grain_workers.start_resource_tracker()
      ds = ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=self._num_workers, per_worker_buffer_size=2),
        worker_init_fn=grain_workers.worker_init,
      )
    self._host_iterator = iter(ds)

  def start_prefetch(self) -> None:
    """Starts the workers / reader threads in the background (called after a restore)."""
    if self._host_iterator is None:
      self._start()
    self._host_iterator.start_prefetch()

  def __next__(self) -> dict[str, jax.Array]:
    if self._host_iterator is None:
      self._start()
    while len(self._device_buffer) <= self._prefetch:
      local = next(self._host_iterator)
      self._device_buffer.append(jax.make_array_from_process_local_data(self._sharding, local))
    self._position += 1
    return self._device_buffer.popleft()

  def _fingerprint(self) -> str:
    # Not the process count: the batch number is global, so a state restores with any
    # process / worker count.
    return self._sampler.fingerprint()

  def get_state(self) -> bytes:
    """Returns the state: JSON `{'version', 'next_batch', 'sampler'}` as bytes."""
    state = {
      "version": _STATE_VERSION,
      "next_batch": self._position,
      "sampler": self._fingerprint(),
    }
    return json.dumps(state, indent=2).encode()

  def set_state(self, state: bytes | str | dict) -> None:
    """Continues from a `get_state()` result: the next batch is the one it recorded.

    Raises:
      ValueError: the state comes from a pipeline with other sampling settings (seed,
        P, K, source), which would silently give a different batch sequence.
    """
    if isinstance(state, bytes | str):
      state = json.loads(state)
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"unsupported train iterator state version: {state.get('version')!r}")
    if state["sampler"] != self._fingerprint():
      raise errors.UserError(
        "the data-iterator state was saved with different sampling settings:\n"
        f"  checkpoint: {state['sampler']}\n  this run:   {self._fingerprint()}\n"
        "(seed, P x K and the training source must match to resume the batch sequence)"
      )
    self.close()
    self._position = int(state["next_batch"])

  def close(self) -> None:
    """Stops worker processes and drops prefetched batches (iteration may restart)."""
    if self._host_iterator is not None:
      self._host_iterator.close()
      self._host_iterator = None
    self._device_buffer.clear()

  def __enter__(self) -> "TrainIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _checked_labels(
  source: Any, person_ids: np.ndarray | None, num_train_ids: int | None
) -> np.ndarray:
  """The training labels of `source` (`person_ids` if given, else read), int [N],
  checked: one per record, in [0, num_train_ids).

  Raises:
    ValueError: a source of 2**31 records or more, or `person_ids` of another length.
    errors.UserError: a negative label (not the train split) or one out of range.
  """
  if len(source) >= 2**31:
    raise ValueError(f"sources of {len(source)} records (>= 2**31) are not supported")
  if person_ids is None:
    person_ids, _ = read_labels(source)
  person_ids = np.asarray(person_ids)
  if len(person_ids) != len(source):
    raise ValueError(f"person_ids has {len(person_ids)} entries, the source {len(source)}")
  if person_ids.min() < 0:
    raise errors.UserError(
      f"training labels must be >= 0, got person_id {person_ids.min()}: is this the "
      "train split (ids remapped to 0..N-1)?"
    )
  if num_train_ids is not None and person_ids.max() >= num_train_ids:
    raise errors.UserError(
      f"training label {person_ids.max()} is out of range for num_train_ids="
      f"{num_train_ids} (labels must be 0..{num_train_ids - 1})"
    )
  return person_ids


def create_train_iterator(
  source: Any,
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  *,
  seed: int,
  num_train_ids: int | None = None,
  person_ids: np.ndarray | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  num_threads: int = 2,
) -> TrainIterator:
  """Builds the training input pipeline.

  Args:
    source: random-access training source; its `person_id`s are the class labels
      (0..N-1, already remapped by the dataset builder).
    config: the run config; reads `config.input.{image_size, num_identities (P),
      num_instances (K), sampler, flip_prob, pad, erasing_*, num_workers, prefetch}`.
    mesh: device mesh with axis `'data'`; batches are sharded over it.
    seed: seed of the sampling and augmentation.
    num_train_ids: number of classes; labels must lie in [0, num_train_ids). Default:
      max label + 1.
    person_ids: the source's `person_id`s, int [len(source)], if known (skips reading
      every record once to collect them).
    process_index, process_count: this JAX process and the process count (default
      `jax.process_index()`, `jax.process_count()`).
    num_threads: reader threads per process (each builds a whole batch).

  Returns:
    A `TrainIterator` (unbounded: the training loop decides when to stop).

  Raises:
    ValueError: P x K not divisible by the device count, P not divisible by the process
      count, labels outside [0, num_train_ids), fewer than P identities.
  """
  input_config = config.input
  p, k = int(input_config.num_identities), int(input_config.num_instances)
  if "data" not in mesh.axis_names:
    raise ValueError(f"the mesh needs an axis named 'data', got axes {mesh.axis_names}")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  _check_batch_divisibility(p * k, mesh.shape["data"], process_count, p)
  if mesh.size != mesh.shape["data"]:
    raise ValueError(f"expected a 1-D data-parallel mesh, got shape {dict(mesh.shape)}")

  person_ids = _checked_labels(source, person_ids, num_train_ids)
  sampler = PKSampler(
    person_ids,
    num_identities=p,
    num_instances=k,
    seed=seed,
    mode=str(input_config.sampler),
    shard_index=process_index,
    shard_count=process_count,
  )
  read = ReadTrainRecord(source, sampler, augment.train_transforms(input_config))
  batches = (
    grain.MapDataset.range(len(sampler))
    .map(read)
    .batch(sampler.local_batch_size, drop_remainder=True)
  )
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  return TrainIterator(
    batches,
    sampler=sampler,
    sharding=sharding,
    num_workers=int(input_config.num_workers),
    num_threads=num_threads,
    prefetch=int(input_config.prefetch),
  )
