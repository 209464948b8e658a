"""create_train_state: replicated init, optimiser state, centres, pretrained weights."""

import jax
import numpy as np
import pytest

from fsaf_jax.pretrained import save_pretrained
from fsaf_jax.training.mesh import make_mesh
from fsaf_jax.training.train_state import create_train_state
from tests.reference import tiny_train_run as ref


def test_state_is_replicated_and_complete(num_devices):
  mesh = make_mesh()
  state = ref.initial_state(mesh)
  assert int(state.step) == 0 and state.centers is None and state.center_opt_state is None
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding.is_fully_replicated
    assert len(leaf.sharding.device_set) == num_devices
  assert set(state.variables) == {"params", "batch_stats"}
  assert "head" in state.batch_stats and "bnneck" in state.params["head"]
  # Same rng, same values, whatever the mesh.
  host_1 = ref.initial_state_host()
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(host_1.params), strict=True):
    np.testing.assert_array_equal(a, b)


def test_pretrained_entries_replace_init(tmp_path):
  config = ref.config().copy_and_resolve_references()
  init = ref.initial_state_host()
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=init.params["backbone"]["conv1"]["kernel"].shape)
  mean = rng.normal(size=init.batch_stats["backbone"]["bn1"]["mean"].shape)
  path = tmp_path / "ibn.msgpack"
  save_pretrained(
    path,
    {
      "params": {"backbone": {"conv1": {"kernel": kernel}}},
      "batch_stats": {"backbone": {"bn1": {"mean": mean}}},
    },
    {"source": "test"},
  )
  config.init.pretrained = str(path)
  state = create_train_state(
    config,
    ref.model(),
    jax.random.key(ref.SEED),
    ref.NUM_CLASSES,
    config.input.image_size,
    steps_per_epoch=ref.STEPS_PER_EPOCH,
    mesh=make_mesh(),
  )
  np.testing.assert_array_equal(
    state.params["backbone"]["conv1"]["kernel"], kernel.astype(np.float32)
  )
  np.testing.assert_array_equal(
    state.batch_stats["backbone"]["bn1"]["mean"], mean.astype(np.float32)
  )
  np.testing.assert_array_equal(
    state.params["head"]["classifier"]["kernel"], init.params["head"]["classifier"]["kernel"]
  )
  assert state.params["backbone"]["conv1"]["kernel"].sharding.is_fully_replicated


def test_centres_created_when_center_loss_is_on():
  state = ref.initial_state_host(5e-4)
  assert state.centers.shape == (ref.NUM_CLASSES, 448) and state.centers.dtype == np.float32
  assert state.center_opt_state is not None


def test_steps_per_epoch_must_be_resolved():
  config = ref.config()
  assert config.train.steps_per_epoch == -1
  with pytest.raises(ValueError, match="steps_per_epoch is -1"):
    create_train_state(
      config, ref.model(), jax.random.key(0), ref.NUM_CLASSES, (64, 32), mesh=make_mesh()
    )
