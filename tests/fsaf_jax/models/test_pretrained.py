"""fsaf_jax.models.pretrained: the Flax-native file and its application to fresh variables.

No PyTorch here: files are written with `save_pretrained` from known random arrays,
so every loaded value can be checked against its source.
"""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util
from jax.sharding import NamedSharding, PartitionSpec

from configs import tiny
from fsaf_jax.models import pretrained, registry
from fsaf_jax.models.pretrained import PretrainedError


def tiny_variables(seed: int, **model_overrides) -> dict:
  """Random numpy variables with the tiny model's tree ({'params', 'batch_stats'})."""
  config = tiny.get_config()
  for field, value in model_overrides.items():
    config.model[field] = value
  model = registry.create_model(config.model, num_classes=6)
  x = jax.ShapeDtypeStruct((1, *config.input.image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), dict(shapes))


def flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(k): v for k, v in traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def backbone_only(variables, drop=("mhsa", "eca")) -> dict:
  """The entries an ImageNet ResNet provides: backbone, without MHSA / ECA modules."""
  keep = {
    k: v
    for k, v in traverse_util.flatten_dict(variables).items()
    if k[1] == "backbone" and not any(t == d or t.startswith(d) for t in k[2:] for d in drop)
  }
  return traverse_util.unflatten_dict(keep)


def write(path, variables, layout=None) -> str:
  pretrained.save_pretrained(path, variables, {"source": "test.pth", "layout": layout or {}})
  return str(path)


def test_round_trip(tmp_path):
  source = backbone_only(tiny_variables(0))
  path = write(tmp_path / "f.msgpack", source, layout={"widths": [8, 16, 32, 64]})
  loaded = pretrained.load_pretrained(path)
  assert loaded["metadata"]["format"] == pretrained.FORMAT
  assert loaded["metadata"]["layout"] == {"widths": [8, 16, 32, 64]}
  assert loaded["metadata"]["source"] == "test.pth"
  expected, actual = flat(source), flat({c: loaded[c] for c in pretrained.COLLECTIONS})
  assert actual.keys() == expected.keys()
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_apply_overwrites_exactly_the_file_entries(tmp_path):
  fresh = tiny_variables(1)
  source = backbone_only(tiny_variables(2))
  path = write(tmp_path / "f.msgpack", source)
  fresh_before = jax.tree.map(np.copy, fresh)
  variables, report = pretrained.apply_pretrained(fresh, pretrained.load_pretrained(path))
  out, init, src = flat(variables), flat(fresh_before), flat(source)
  assert out.keys() == init.keys()
  for key in out:
    np.testing.assert_array_equal(out[key], src.get(key, init[key]), err_msg=key)
  for key, value in flat(fresh).items():  # the input is not modified
    np.testing.assert_array_equal(value, init[key])
  assert sorted(report.loaded) == sorted(src)
  assert sorted(report.left_at_init) == sorted(set(init) - set(src))
  assert "params/backbone/layer3_0/mhsa/rel_h" in report.left_at_init
  assert "params/head/classifier/kernel" in report.left_at_init
  assert "batch_stats/head/bnneck/var" in report.left_at_init
  assert report.dropped == () and report.source == "test.pth"
  text = str(report)
  assert f"{len(src)} entries loaded from test.pth" in text
  assert (
    "params/backbone/layer4_{0..1}/mhsa/{key/kernel,query/kernel,rel_h,rel_w,value/kernel}" in text
  )


def test_apply_accepts_a_path_and_keeps_the_sharding(tmp_path):
  fresh = tiny_variables(3)
  source = backbone_only(tiny_variables(4))
  path = write(tmp_path / "f.msgpack", source)
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  on_devices = jax.device_put(fresh, replicated)
  variables, _ = pretrained.apply_pretrained(on_devices, path)
  kernel = variables["params"]["backbone"]["layer1_0"]["conv1"]["kernel"]
  assert isinstance(kernel, jax.Array) and kernel.sharding == replicated
  np.testing.assert_array_equal(
    np.asarray(kernel), source["params"]["backbone"]["layer1_0"]["conv1"]["kernel"]
  )


def test_plain_layout_file_drops_conv2_where_the_model_has_mhsa(tmp_path):
  plain = tiny_variables(5, mhsa_stages=(), eca_placement="none", fusion="none")
  path = write(tmp_path / "plain.msgpack", backbone_only(plain))
  fresh = tiny_variables(6)  # the full tiny model: MHSA in Conv4_x / Conv5_x
  variables, report = pretrained.apply_pretrained(fresh, path)
  assert sorted(report.dropped) == [
    f"params/backbone/layer{s}_{i}/conv2/kernel" for s in (3, 4) for i in (0, 1)
  ]
  assert f"{pretrained.DROPPED_TITLE}: 4" in str(report)
  assert "params/backbone/layer3_{0..1}/conv2/kernel" in str(report)
  np.testing.assert_array_equal(  # conv2 of Conv2_x/Conv3_x still loaded
    variables["params"]["backbone"]["layer2_1"]["conv2"]["kernel"],
    plain["params"]["backbone"]["layer2_1"]["conv2"]["kernel"],
  )


def test_shape_mismatch_names_the_path_and_both_shapes(tmp_path):
  source = backbone_only(tiny_variables(7))
  source["params"]["backbone"]["layer2_0"]["conv3"]["kernel"] = np.zeros((1, 1, 16, 32))
  path = write(tmp_path / "f.msgpack", source, layout={"widths": [8, 16, 8, 64]})
  with pytest.raises(
    PretrainedError,
    match=r"params/backbone/layer2_0/conv3/kernel: file \(1, 1, 16, 32\) vs model "
    r"\(1, 1, 16, 64\)(.|\n)*converted for the layout \{'widths': \[8, 16, 8, 64\]\}",
  ):
    pretrained.apply_pretrained(tiny_variables(8), path)


def test_entries_the_model_lacks_are_an_error_unless_ignored(tmp_path):
  ibn = backbone_only(tiny_variables(9))  # IBN-a in Conv2_x..Conv4_x
  path = write(tmp_path / "ibn.msgpack", ibn)
  plain_model = tiny_variables(10, ibn_stages=())
  with pytest.raises(PretrainedError, match=r"layer1_\{0..1\}/bn1/\{BN/bias,BN/scale,IN/bias"):
    pretrained.apply_pretrained(plain_model, path)
  # Explicitly ignored: loads the rest, reports the ignored entries as dropped.
  variables, report = pretrained.apply_pretrained(
    plain_model, path, ignore_unused=[r".*/bn1/(IN|BN)/.*"]
  )
  assert report.dropped and all("/bn1/" in p for p in report.dropped)
  assert "params/backbone/layer1_0/bn1/scale" in report.left_at_init
  np.testing.assert_array_equal(
    variables["params"]["backbone"]["layer1_0"]["conv1"]["kernel"],
    ibn["params"]["backbone"]["layer1_0"]["conv1"]["kernel"],
  )


def test_a_file_matching_nothing_is_an_error(tmp_path):
  path = write(tmp_path / "f.msgpack", {"params": {}, "batch_stats": {}})
  with pytest.raises(PretrainedError, match="holds no entry of this model"):
    pretrained.apply_pretrained(tiny_variables(11), path)


def test_load_rejects_other_files(tmp_path):
  with pytest.raises(PretrainedError, match="does not exist.*convert_ibn"):
    pretrained.load_pretrained(tmp_path / "missing.msgpack")
  with pytest.raises(PretrainedError, match="is a directory"):
    pretrained.load_pretrained(tmp_path)
  pth = tmp_path / "r50.pth"
  pth.write_bytes(b"PK\x03\x04" + bytes(100))  # what torch.save writes: a zip
  with pytest.raises(PretrainedError, match="looks like a PyTorch checkpoint; convert it first"):
    pretrained.load_pretrained(pth)
  garbage = tmp_path / "garbage.bin"
  garbage.write_bytes(bytes(range(256)) * 4)
  with pytest.raises(PretrainedError, match="garbage.bin.*not a fsaf_jax pretrained file"):
    pretrained.load_pretrained(garbage)
  foreign = tmp_path / "foreign.msgpack"  # e.g. a flax checkpoint of something else
  foreign.write_bytes(serialization.msgpack_serialize({"params": {"w": np.zeros(3)}}))
  with pytest.raises(PretrainedError, match="no metadata record"):
    pretrained.load_pretrained(foreign)
  other = tmp_path / "other.msgpack"
  other.write_bytes(
    serialization.msgpack_serialize({"params": {}, "metadata": json.dumps({"format": "x"})})
  )
  with pytest.raises(PretrainedError, match="format is 'x'"):
    pretrained.load_pretrained(other)


def test_summarize_paths_groups_blocks_and_leaves():
  keys = [f"layer3.{i}.conv2.weight" for i in range(6)] + ["fc.weight", "fc.bias"]
  keys += ["layer4.0.conv2.weight", "layer4.2.conv2.weight"]
  assert pretrained.summarize_paths(keys, ".") == [
    "layer3.{0..5}.conv2.weight",
    "fc.{bias,weight}",
    "layer4.{0,2}.conv2.weight",
  ]
  paths = [f"params/backbone/layer1_{i}/bn1/{n}/scale" for i in (0, 1) for n in ("IN", "BN")]
  paths += ["params/head/classifier/kernel", "params/backbone/layer2_0/conv1/kernel"]
  assert pretrained.summarize_paths(paths) == [
    "params/backbone/layer1_{0..1}/bn1/{BN/scale,IN/scale}",
    "params/head/classifier/kernel",
    "params/backbone/layer2_0/conv1/kernel",
  ]
