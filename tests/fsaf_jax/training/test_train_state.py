"""create_train_state: replicated init, optimiser state, centres, pretrained weights."""

import jax
import numpy as np
import pytest

from fsaf_jax.core import errors
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.models.pretrained import MissingPretrainedError, pretrained_file, save_pretrained
from fsaf_jax.training.train_state import check_initialisation, create_train_state, init_variables
from tests.reference import tiny_train_run as ref


def test_state_is_replicated_and_complete(num_devices):
  mesh = make_mesh()
  state = ref.initial_state(mesh)
  assert int(state.step) == 0 and state.loss_params == {}
  assert set(state.opt_state) == {"model", "loss"} and state.opt_state["loss"] == {}
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
  centers = state.loss_params["center"]
  assert set(state.loss_params) == {"center"}
  assert centers.shape == (ref.NUM_CLASSES, 448) and centers.dtype == np.float32
  assert set(state.opt_state["loss"]) == {"center"}
  # The model's parameters keep their own tree: inference variables hold no centres.
  assert set(state.variables) == {"params", "batch_stats"} and "center" not in state.params


def test_steps_per_epoch_must_be_resolved():
  config = ref.config()
  assert config.train.steps_per_epoch == -1
  with pytest.raises(ValueError, match="steps_per_epoch is -1"):
    create_train_state(
      config, ref.model(), jax.random.key(0), ref.NUM_CLASSES, (64, 32), mesh=make_mesh()
    )


def _bn3_scales(params):
  """{block name: (has mhsa, bn3 scale)} of every bottleneck."""
  backbone = params["backbone"]
  return {
    name: ("mhsa" in block, np.asarray(block["bn3"]["scale"]))
    for name, block in backbone.items()
    if name.startswith("layer")
  }


def test_attention_blocks_last_bn_scale_starts_at_zero_after_pretrained(tmp_path):
  # The tiny FSAF has MHSA in Conv4_x / Conv5_x (layer3_*, layer4_*), convs elsewhere.
  config = ref.config().copy_and_resolve_references()
  init = ref.initial_state_host()
  blocks = _bn3_scales(init.params)
  assert {name for name, (mhsa, _) in blocks.items() if mhsa} == {
    "layer3_0",
    "layer3_1",
    "layer4_0",
    "layer4_1",
  }
  # A pretrained file sets every bn3 scale to 2.5 (as an ImageNet file sets them all).
  path = tmp_path / "ibn.msgpack"
  file_params = {
    "backbone": {name: {"bn3": {"scale": np.full_like(s, 2.5)}} for name, (_, s) in blocks.items()}
  }
  save_pretrained(path, {"params": file_params}, {"source": "test"})
  config.init.pretrained = str(path)
  for zero_init in (True, False):
    config.init.zero_init_attention_bn = zero_init
    variables, report = init_variables(
      config, ref.model(), jax.random.key(ref.SEED), config.input.image_size, make_mesh()
    )
    assert len(report.loaded) == len(blocks)
    for name, (mhsa, scale) in _bn3_scales(variables["params"]).items():
      expected = 0.0 if (mhsa and zero_init) else 2.5
      np.testing.assert_array_equal(scale, np.full_like(scale, expected), err_msg=name)
      assert variables["params"]["backbone"][name]["bn3"]["scale"].sharding.is_fully_replicated
  # Nothing else changes: the rest equals the plain init.
  flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  init_flat = dict(jax.tree_util.tree_flatten_with_path(init.params)[0])
  for path_, leaf in flat:
    if "bn3" not in jax.tree_util.keystr(path_):
      np.testing.assert_array_equal(leaf, init_flat[path_])


def test_empty_pretrained_is_refused_naming_the_release_and_scratch():
  config = ref.config()
  config.init.pretrained = ""
  with pytest.raises(MissingPretrainedError) as e:
    check_initialisation(config.init)
  assert "config.init.pretrained is empty" in str(e.value)
  message = errors.format_error(e.value)  # what a command prints: ERROR + hint lines
  assert message.startswith("ERROR: config.init.pretrained") and "\nhint: " in message
  assert "resnet50_ibn_a-d9d0bb7b.pth" in message
  assert "python -m fsaf_jax.convert_ibn" in message
  assert "--config.init.pretrained=scratch" in message
  config.init.pretrained = "scratch"
  check_initialisation(config.init)  # on purpose: accepted
  assert pretrained_file("scratch") is None and pretrained_file("a.msgpack") == "a.msgpack"
