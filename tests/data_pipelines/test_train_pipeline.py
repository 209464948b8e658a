"""Tests of the grain training input pipeline (data_pipelines/train_pipeline.py)."""

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.base import get_base_config
from data_pipelines import augment
from data_pipelines.train_pipeline import ReadTrainRecord, create_train_iterator
from tests.reference.fake_reid_source import make_source

P, K = 4, 2  # global batch 8: two rows per simulated device


@pytest.fixture(scope="module")
def source():
  return make_source([3, 5, 2, 4, 6, 4, 1, 3, 4, 5], image_hw=(16, 8))


@pytest.fixture(scope="module")
def mesh():
  return jax.sharding.Mesh(np.array(jax.devices()), ("data",))


def _config(**input_overrides):
  config = get_base_config()
  config.input.image_size = (32, 16)
  config.input.num_identities = P
  config.input.num_instances = K
  config.input.pad = 4
  config.input.num_workers = 0
  config.input.prefetch = 2
  config.input.update(input_overrides)
  return config


def host_batch(iterator, source, config, batch: int) -> dict[str, np.ndarray]:
  """This process's part of global batch number `batch`, on the host, by random access.

  Read position by position from the iterator's sampler (its process's share of the
  sampler positions, `local_batch_size` per batch) with the pipeline's record transform:
  no iterator state, no device transfer, so a simulated process's part can be checked.
  """
  sampler = iterator.sampler
  read = ReadTrainRecord(source, sampler, augment.train_transforms(config.input))
  n = sampler.local_batch_size
  rows = [read.map(position) for position in range(batch * n, (batch + 1) * n)]
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


def _take(iterator, n):
  """n batches as host numpy dicts."""
  return [jax.tree.map(np.asarray, next(iterator)) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x["index"], y["index"])
    assert x["image"].tobytes() == y["image"].tobytes()
    np.testing.assert_array_equal(x["label"], y["label"])


def test_train_batch_is_a_global_array_sharded_over_devices(source, mesh, num_devices):
  assert num_devices == 4
  with create_train_iterator(source, _config(), mesh, seed=0) as it:
    batch = next(it)
  assert set(batch) == {"image", "label", "camera_id", "index"}
  b = P * K
  expected = {
    "image": ((b, 32, 16, 3), np.uint8),
    "label": ((b,), np.int32),
    "camera_id": ((b,), np.int32),
    "index": ((b,), np.int32),
  }  # int64 needs x64
  for key, (shape, dtype) in expected.items():
    x = batch[key]
    assert isinstance(x, jax.Array) and x.shape == shape and x.dtype == dtype, key
    assert x.sharding.spec == jax.sharding.PartitionSpec("data")
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 4
    assert [s.data.shape for s in shards] == [(b // 4, *shape[1:])] * 4
    assert len({s.device for s in shards}) == 4
    for i, s in enumerate(shards):
      np.testing.assert_array_equal(s.data, np.asarray(x)[i * b // 4 : (i + 1) * b // 4])


@pytest.mark.parametrize("sampler", ["bot", "uniform"])
def test_train_batches_are_pk_and_match_the_source(source, mesh, sampler):
  # Without augmentation a row is exactly its source record, decoded and resized.
  config = _config(flip_prob=0.0, pad=0, erasing_prob=0.0, sampler=sampler)
  with create_train_iterator(source, config, mesh, seed=1) as it:
    batches = _take(it, 2 * it.batches_per_epoch)
    assert it.sampler.mode == sampler
    counts = np.array([3, 5, 2, 4, 6, 4, 1, 3, 4, 5])  # the source fixture's
    if sampler == "bot":
      assert it.batches_per_epoch == np.sum(np.maximum(counts, K) // K) // P
    else:
      assert it.batches_per_epoch == 10 // P
  for batch in batches:
    runs = batch["label"].reshape(P, K)
    assert (runs == runs[:, :1]).all() and len(set(runs[:, 0])) == P
    for row, index in enumerate(batch["index"]):
      record = source[index]
      assert batch["label"][row] == record["person_id"]
      assert batch["camera_id"][row] == record["camera_id"]
      np.testing.assert_array_equal(
        batch["image"][row], augment.decode_image(record["image"], (32, 16))
      )
  # The 1-image identity (6) appears K times with its only record.
  rows = [b["index"][b["label"] == 6] for b in batches]
  assert any(len(r) for r in rows) and all(len(set(r)) <= 1 for r in rows)


def test_augmented_batches_deterministic_per_seed(source, mesh):
  def run(seed):
    with create_train_iterator(source, _config(), mesh, seed=seed) as it:
      return _take(it, 3)

  a, b, c = run(4), run(4), run(5)
  _assert_same_batches(a, b)
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c, strict=True))
  assert a[0]["image"].tobytes() != c[0]["image"].tobytes()


def test_resume_from_state_continues_with_the_next_batch(source, mesh):
  config = _config()
  with create_train_iterator(source, config, mesh, seed=2) as it:
    first = _take(it, 2)
    state = it.get_state()
    rest = _take(it, 4)  # crosses an epoch boundary (2 batches per epoch)
  with create_train_iterator(source, config, mesh, seed=2) as resumed:
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 4), rest)
  assert not np.array_equal(first[0]["index"], rest[0]["index"])


def test_resume_through_worker_processes(source, mesh):
  """2 grain workers give the in-process batches; states move between worker counts."""
  with create_train_iterator(source, _config(), mesh, seed=3) as it:
    reference = _take(it, 7)
  with create_train_iterator(source, _config(), mesh, seed=3) as it:
    _take(it, 2)
    state = it.get_state()
  # One worker pipeline (spawning workers takes a while): restored into, then saved from.
  with create_train_iterator(source, _config(num_workers=2), mesh, seed=3) as it:
    it.set_state(state)
    _assert_same_batches(_take(it, 3), reference[2:5])
    state = it.get_state()
  with create_train_iterator(source, _config(), mesh, seed=3) as it:
    it.set_state(state)
    _assert_same_batches(_take(it, 2), reference[5:7])


def test_orbax_checkpoint_manager_round_trip(source, mesh, tmp_path):
  config = _config()
  with create_train_iterator(source, config, mesh, seed=6) as it:
    _take(it, 3)
    params = {"w": np.arange(3.0)}
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
      mngr.save(
        3,
        args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), data_iter=grain.checkpoint.CheckpointSave(it)
        ),
      )
      mngr.wait_until_finished()
    expected = _take(it, 2)
  with create_train_iterator(source, config, mesh, seed=6) as fresh:
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
      restored = mngr.restore(
        mngr.latest_step(),
        args=ocp.args.Composite(
          params=ocp.args.StandardRestore(params),
          data_iter=grain.checkpoint.CheckpointRestore(fresh),
        ),
      )
    assert restored["data_iter"] is fresh
    np.testing.assert_array_equal(restored["params"]["w"], params["w"])
    _assert_same_batches(_take(fresh, 2), expected)


def test_state_from_other_sampling_settings_is_rejected(source, mesh):
  with create_train_iterator(source, _config(), mesh, seed=0) as it:
    state = it.get_state()
  with create_train_iterator(source, _config(), mesh, seed=1) as other:
    with pytest.raises(ValueError, match="different sampling settings"):
      other.set_state(state)


def test_batch_not_divisible_by_devices_or_processes(source, mesh):
  with pytest.raises(ValueError, match=r"P x K = 6 .*device count 4"):
    create_train_iterator(source, _config(num_identities=3), mesh, seed=0)
  with pytest.raises(ValueError, match=r"P = config.input.num_identities = 4 .*process count 3"):
    create_train_iterator(source, _config(), mesh, seed=0, process_count=3, process_index=0)


def test_labels_out_of_range_are_rejected(source, mesh):
  with pytest.raises(ValueError, match="label 9 is out of range for num_train_ids=5"):
    create_train_iterator(source, _config(), mesh, seed=0, num_train_ids=5)


def test_process_local_batches_concatenate_to_the_global_batch(source, mesh):
  """Two simulated processes each deliver P/2 whole identities of every global batch."""
  config = _config()
  whole = create_train_iterator(source, config, mesh, seed=9)
  parts = [
    create_train_iterator(source, config, mesh, seed=9, process_index=i, process_count=2)
    for i in range(2)
  ]
  with whole:
    for batch in range(3):
      local = [host_batch(p, source, config, batch) for p in parts]
      assert local[0]["index"].shape == (P * K // 2,)
      delivered = jax.tree.map(np.asarray, next(whole))  # what the single process yields
      for key in ("index", "image", "label"):
        np.testing.assert_array_equal(np.concatenate([x[key] for x in local]), delivered[key])
