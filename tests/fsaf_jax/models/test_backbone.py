"""Backbone: PyTorch parity (official ResNet-IBN-a structure), shapes, options, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fsaf_jax.models.backbone import Backbone
from tests.reference import flax_from_torch
from tests.reference import torch_resnet_ibn as ref

TINY = dict(stage_sizes=(2, 2, 2, 2), stem_width=8, widths=(8, 16, 32, 64))
KEYS = ("stem", "conv2", "conv3", "conv4", "conv5")
TORCH_KEYS = ("stem", "layer1", "layer2", "layer3", "layer4")


def _init_shapes(model, shape):
  """Variable shapes of `model` for inputs of `shape`, by abstract evaluation (no compile)."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)


def _torch_tiny(last_stride):
  torch.manual_seed(0)
  net = ref.resnet_ibn_a_tiny(last_stride=last_stride)
  flax_from_torch.randomize_norms_(net, seed=2)
  return net, jax.tree.map(jnp.asarray, flax_from_torch.to_flax(net.state_dict()))


def _torch_forward(net, x, train):
  net.train(train)
  with torch.no_grad():
    out = net.features(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  return {
    key: out[name].numpy().transpose(0, 2, 3, 1) for key, name in zip(KEYS, TORCH_KEYS, strict=True)
  }


@pytest.mark.parametrize("last_stride, train", [(2, False), (1, True)])
def test_matches_official_resnet_ibn_a(last_stride, train):
  net, variables = _torch_tiny(last_stride)
  x = np.random.default_rng(0).normal(size=(2, 64, 32, 3)).astype(np.float32)
  model = Backbone(**TINY, mhsa_stages=(), eca_placement="none", last_stride=last_stride)
  shapes = jax.tree.map(lambda a: a.shape, _init_shapes(model, x.shape))
  assert shapes == jax.tree.map(lambda a: a.shape, variables)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=["batch_stats"])[0])
  out = apply(variables, jnp.asarray(x))
  expected = _torch_forward(net, x, train)
  for key in KEYS:
    np.testing.assert_allclose(
      np.asarray(out[key]), expected[key], rtol=2e-4, atol=2e-4, err_msg=key
    )


def test_stage_eca_follows_stem_and_every_stage():
  net, variables = _torch_tiny(2)
  x = np.random.default_rng(1).normal(size=(2, 64, 32, 3)).astype(np.float32)
  model = Backbone(**TINY, mhsa_stages=(), eca_placement="stage")
  init = _init_shapes(model, x.shape)["params"]
  eca_names = sorted(k for k in init if k.startswith("eca"))
  assert eca_names == ["eca_layer1", "eca_layer2", "eca_layer3", "eca_layer4", "eca_stem"]
  # A zero ECA kernel gates every channel by sigmoid(0) = 0.5: halve each stage output.
  params = dict(variables["params"])
  for name in eca_names:
    params[name] = {"conv": {"kernel": jnp.zeros(init[name]["conv"]["kernel"].shape)}}
  out = jax.jit(model.apply)(
    {"params": params, "batch_stats": variables["batch_stats"]}, jnp.asarray(x)
  )
  net.eval()
  with torch.no_grad():
    h = torch.from_numpy(x.transpose(0, 3, 1, 2))
    h = 0.5 * net.maxpool(net.relu(net.bn1(net.conv1(h))))
    expected = {"stem": h}
    for s, key in enumerate(KEYS[1:]):
      h = 0.5 * getattr(net, f"layer{s + 1}")(h)
      expected[key] = h
  for key in KEYS:
    np.testing.assert_allclose(
      np.asarray(out[key]),
      expected[key].numpy().transpose(0, 2, 3, 1),
      rtol=2e-4,
      atol=2e-4,
      err_msg=key,
    )


def test_eca_placement_params():
  block = _init_shapes(Backbone(**TINY, eca_placement="block"), (1, 64, 32, 3))["params"]
  assert not [k for k in block if k.startswith("eca")]
  assert all("eca" in block[f"layer{s}_{i}"] for s in range(1, 5) for i in range(2))
  none = _init_shapes(Backbone(**TINY, eca_placement="none"), (1, 64, 32, 3))["params"]
  assert not any(
    "eca" in "/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(none)[0]
  )


def _abstract(last_stride):
  model = Backbone(last_stride=last_stride)  # the paper's R50-IBN-a + MHSA + ECA
  x = jax.ShapeDtypeStruct((2, 256, 128, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
  return variables["params"], out


def test_shapes_at_256x128_last_stride_2():
  params, out = _abstract(2)
  assert out["stem"].shape == (2, 64, 32, 64)
  assert out["conv2"].shape == (2, 64, 32, 256)
  assert out["conv3"].shape == (2, 32, 16, 512)
  assert out["conv4"].shape == (2, 16, 8, 1024)
  assert out["conv5"].shape == (2, 8, 4, 2048)
  # Tables sized from the map each MHSA sees (first blocks see the pre-stride map).
  tables = {
    k: (v["mhsa"]["rel_h"].shape, v["mhsa"]["rel_w"].shape)
    for k, v in params.items()
    if "mhsa" in v
  }
  assert tables["layer3_0"] == ((63, 64), (31, 64))
  assert all(tables[f"layer3_{i}"] == ((31, 64), (15, 64)) for i in range(1, 6))
  assert tables["layer4_0"] == ((31, 128), (15, 128))
  assert tables["layer4_1"] == tables["layer4_2"] == ((15, 128), (7, 128))
  assert len(tables) == 9 and not any("conv2" in params[k] for k in tables)


def test_shapes_at_256x128_last_stride_1():
  params, out = _abstract(1)
  assert out["conv4"].shape == (2, 16, 8, 1024)
  assert out["conv5"].shape == (2, 16, 8, 2048)
  for i in range(3):
    mhsa = params[f"layer4_{i}"]["mhsa"]
    assert (mhsa["rel_h"].shape, mhsa["rel_w"].shape) == ((31, 128), (15, 128))


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(eca_placement="foo"), "eca_placement='foo'"),
    (dict(mhsa_stages=(4, 7)), r"mhsa_stages=\(4, 7\)"),
    (dict(ibn_stages=(1,)), "ibn_stages"),
    (dict(last_stride=3), "last_stride=3"),
    (dict(num_heads=3), "num_heads=3"),
    (dict(stage_sizes=(1, 1, 1)), "stage_sizes"),
    (dict(widths=(8, 16, 0, 64)), "widths"),
  ],
)
def test_bad_settings_name_the_field(kwargs, match):
  # Checked when the module is constructed (so `create_model` fails before any init).
  with pytest.raises(ValueError, match=match):
    Backbone(**{**TINY, **kwargs})
