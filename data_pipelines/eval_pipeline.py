"""The evaluation input pipeline on grain: a source in order, as padded host batches.

`create_eval_batches`: the source (records as in `data_pipelines.source_records`) in order,
decoded in parallel, as fixed-size host NumPy batches with the last one padded and a
`mask`. The training pipeline is `data_pipelines.train_pipeline`.
"""

import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from data_pipelines import augment, errors, grain_workers, source_records


class ReadEvalRecord(grain.transforms.Map):
  """Source index -> decoded evaluation record (no augmentation)."""

  def __init__(self, source: Any, image_size: Sequence[int]):
    self._source = source
    self._decode = augment.DecodeImage(tuple(image_size))

  def map(self, index: int) -> dict[str, np.ndarray]:
    record = self._source[index]
    file_name = source_records.file_name(record)
    element = self._decode.map({"image": record["image"], "file_name": file_name})
    return {
      "image": element["image"],
      "person_id": np.int32(record["person_id"]),
      "camera_id": np.int32(record["camera_id"]),
      "file_name": file_name,
      "index": np.int64(index),
    }


class PadBatch:
  """Stacks up to `batch_size` eval records and pads to exactly `batch_size`.

  Padding rows have a zero image, `person_id` / `camera_id` / `index` -1, `file_name`
  '' and `mask` False; so has a record with `valid` False (an image left out, e.g. one
  that does not decode: `fsaf_jax.extract --skip_corrupt`).
  """

  def __init__(self, batch_size: int):
    self.batch_size = batch_size

  def __call__(self, records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    pad = self.batch_size - len(records)
    image = np.stack([r["image"] for r in records])
    batch = {
      "image": np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)]),
      "mask": np.array([bool(r.get("valid", True)) for r in records] + [False] * pad),
      "file_name": np.array([r["file_name"] for r in records] + [""] * pad, dtype=object),
    }
    for key, dtype in (("person_id", np.int32), ("camera_id", np.int32), ("index", np.int64)):
      batch[key] = np.array([r[key] for r in records] + [-1] * pad, dtype)
    return batch


def create_eval_batches(
  source: Any,
  batch_size: int,
  image_size: Sequence[int],
  *,
  num_threads: int | None = None,
  num_workers: int = 0,
  read: grain.transforms.Map | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields the whole source once, in order, as fixed-size padded host batches.

  Args:
    source: random-access source of query or gallery records.
    batch_size: records per batch (every batch has this size: no recompiles).
    image_size: (H, W) the images are resized to.
    num_threads: decoding threads (default: the CPU count); PIL releases the GIL while
      decoding and resizing.
    num_workers: grain worker processes (0: decode in this process with the threads).
    read: the transform from a source index to a decoded record (the keys of
      `ReadEvalRecord`'s, optionally `valid`); default `ReadEvalRecord(source,
      image_size)`.

  Yields:
    dicts: `image` uint8 [batch_size, H, W, 3], `person_id` int32, `camera_id` int32,
    `index` int64 (source index), `file_name` object (str) and `mask` bool, all
    [batch_size]; the last batch is padded (mask False, ids -1).
  """
  if batch_size < 1:
    raise errors.UserError(f"eval batch_size must be positive, got {batch_size}")
  if len(source) == 0:
    return
  num_threads = num_threads or os.cpu_count() or 1
  read = read or ReadEvalRecord(source, image_size)
  ds = grain.MapDataset.range(len(source)).map(read)
  ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * batch_size)
  )
  if num_workers:
    grain_workers.ensure_absl_flags_parsed()
    grain_workers.start_resource_tracker()
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=batch_size),
      worker_init_fn=grain_workers.worker_init,
    )
  ds = ds.batch(batch_size, drop_remainder=False, batch_fn=PadBatch(batch_size))
  iterator = iter(ds)
  try:
    yield from iterator
  finally:
    iterator.close()


def source_ids(
  source: Sequence[dict[str, Any]], chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
  """(person_id, camera_id), int32 [len(source)] each, of every record of `source`.

  Records are read in chunks (`__getitems__` when the source has it); their encoded
  images are dropped, not decoded.
  """
  getitems = getattr(source, "__getitems__", None)
  pids, cams = [], []
  for start in range(0, len(source), chunk):
    indices = list(range(start, min(start + chunk, len(source))))
    records = getitems(indices) if getitems else [source[i] for i in indices]
    pids.extend(int(r["person_id"]) for r in records)
    cams.extend(int(r["camera_id"]) for r in records)
  return np.asarray(pids, np.int32), np.asarray(cams, np.int32)
