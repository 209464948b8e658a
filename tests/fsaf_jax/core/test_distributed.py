"""Multi-process setup: environment handling, per-process batch slices and global
arrays, and two CPU processes joined by jax.distributed training like one."""

import pathlib

import jax
import numpy as np
import pytest

from fsaf_jax.core.distributed import maybe_initialize_distributed
from fsaf_jax.core.mesh import DATA_AXIS, make_mesh
from tests.reference import tiny_train_run as ref
from tests.reference.multiprocess import (
  barrier,
  global_batch,
  launch_processes,
  process_batch_slice,
)

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture
def clean_env(monkeypatch):
  for name in (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "FSAF_DISTRIBUTED",
  ):
    monkeypatch.delenv(name, raising=False)
  return monkeypatch


def test_single_process_without_environment_does_nothing(clean_env):
  calls = []
  clean_env.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  assert maybe_initialize_distributed() is False
  assert calls == []


def test_environment_is_passed_to_initialize(clean_env):
  calls = []
  clean_env.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  clean_env.setenv("JAX_NUM_PROCESSES", "4")
  clean_env.setenv("JAX_PROCESS_ID", "3")
  assert maybe_initialize_distributed() is True
  ((args, kwargs),) = calls
  assert args == ("10.0.0.1:1234",)
  assert kwargs["num_processes"] == 4 and kwargs["process_id"] == 3


def test_auto_detection_and_explicit_arguments(clean_env):
  calls = []
  clean_env.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  clean_env.setenv("FSAF_DISTRIBUTED", "auto")
  assert maybe_initialize_distributed() is True
  assert calls[-1][0] == ()  # no address: JAX's cluster detection
  assert maybe_initialize_distributed("h:1", 2, 0) is True
  assert calls[-1][0] == ("h:1",) and calls[-1][1]["num_processes"] == 2


def test_incomplete_environment_raises(clean_env):
  clean_env.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("called"))
  clean_env.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
    maybe_initialize_distributed()
  clean_env.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two'"):
    maybe_initialize_distributed()


def test_single_process_slice_and_global_batch(num_devices):
  mesh = make_mesh()
  assert mesh.axis_names == (DATA_AXIS,) and mesh.devices.size == num_devices
  assert process_batch_slice(16, mesh) == slice(0, 16)
  local = {"image": np.arange(16 * 2).reshape(16, 2), "label": np.arange(16, dtype=np.int32)}
  batch = global_batch(local, mesh)
  assert batch["image"].shape == (16, 2)
  assert batch["image"].sharding.spec == jax.sharding.PartitionSpec(DATA_AXIS)
  np.testing.assert_array_equal(batch["label"], local["label"])
  shard_rows = sorted(s.data.shape[0] for s in batch["label"].addressable_shards)
  assert shard_rows == [16 // num_devices] * num_devices


def test_barrier_is_a_no_op_in_one_process():
  barrier("single", timeout_seconds=1)  # returns at once, nothing to wait for


def test_bad_batches_raise():
  mesh = make_mesh()
  with pytest.raises(ValueError, match="global batch size 6 is not divisible by the 4"):
    process_batch_slice(6, mesh)
  with pytest.raises(ValueError, match="disagree on the batch size"):
    global_batch({"image": np.zeros((4, 2)), "label": np.zeros(8)}, mesh)
  with pytest.raises(ValueError, match="local batch size 6 is not divisible by this"):
    global_batch({"label": np.zeros(6)}, mesh)


@pytest.mark.slow
@pytest.mark.parametrize("devices_per_process", [2])
def test_two_processes_train_like_one(tmp_path, devices_per_process):
  """2 processes x 2 CPU devices, each feeding its half of every global batch, end with
  the same parameters as this single process on 4 devices and on 1 device."""
  num_processes = 2
  cache_dir = jax.config.jax_compilation_cache_dir or str(tmp_path / "cache")
  launch_processes(WORKER, [tmp_path, devices_per_process, cache_dir], num_processes)
  results = [dict(np.load(tmp_path / f"p{pid}.npz")) for pid in range(num_processes)]
  np.testing.assert_array_equal(results[0]["rows"], [0, 8])
  np.testing.assert_array_equal(results[1]["rows"], [8, 16])
  keys = sorted(k for k in results[0] if not k.startswith(("metrics/", "rows", "step")))
  assert int(results[0]["step"]) == 2
  # The processes hold the same replicated state.
  for k in keys:
    np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)

  states, metrics = ref.run(4)  # one process, same 4-way sharding
  single = {"params": states[-1].params, "batch_stats": states[-1].batch_stats}
  flat = {
    "/".join(str(getattr(k, "key", k)) for k in path): v
    for path, v in jax.tree_util.tree_flatten_with_path(single)[0]
  }
  assert sorted(flat) == keys
  multi = [results[0][k] for k in keys]
  diff_4 = ref.tree_rel_diff(multi, [flat[k] for k in keys])
  print(f"2 processes vs 1 process x 4 devices: {diff_4:.2e} relative")
  assert diff_4 <= 1e-5
  for i in range(2):
    for name in ("loss", "ce", "triplet"):
      np.testing.assert_allclose(results[0][f"metrics/{i}/{name}"], metrics[i][name], rtol=1e-4)
  # And the one-device run, as in test_train_step.
  states_1, _ = ref.run(1)
  single_1 = {"params": states_1[-1].params, "batch_stats": states_1[-1].batch_stats}
  leaves_1 = dict(
    ("/".join(str(getattr(k, "key", k)) for k in path), v)
    for path, v in jax.tree_util.tree_flatten_with_path(single_1)[0]
  )
  diff_1 = ref.tree_rel_diff(multi, [leaves_1[k] for k in keys])
  print(f"2 processes vs 1 device: {diff_1:.2e} relative")
  assert diff_1 <= 1e-5
