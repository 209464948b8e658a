"""Bottleneck against the official IBN-Net PyTorch block with the same weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fsaf_jax.models.bottleneck import Bottleneck
from tests.reference import flax_from_torch
from tests.reference import torch_resnet_ibn as ref


def _torch_block(inplanes, planes, stride, ibn, bn3_factor=1.0):
  downsample = None
  if stride != 1 or inplanes != 4 * planes:
    downsample = torch.nn.Sequential(
      torch.nn.Conv2d(inplanes, 4 * planes, 1, stride=stride, bias=False),
      torch.nn.BatchNorm2d(4 * planes),
    )
  torch.manual_seed(0)
  block = ref.BottleneckIBN(inplanes, planes, ibn, stride, downsample)
  flax_from_torch.randomize_norms_(block, seed=1)
  variables = flax_from_torch.to_flax({f"layer1.0.{k}": v for k, v in block.state_dict().items()})
  variables = jax.tree.map(jnp.asarray, variables)
  variables = {c: t["layer1_0"] for c, t in variables.items()}
  with torch.no_grad():  # ECA with a zero kernel gates by sigmoid(0) = 0.5 == halved bn3
    block.bn3.weight.mul_(bn3_factor)
    block.bn3.bias.mul_(bn3_factor)
  return block, variables


def _run_torch(block, x, train):
  block.train(train)
  with torch.no_grad():
    y = block(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  return y.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize(
  "inplanes, planes, stride, ibn", [(16, 8, 2, "a"), (32, 8, 1, None), (16, 8, 1, "a")]
)
def test_matches_official_block(inplanes, planes, stride, ibn, train):
  block, variables = _torch_block(inplanes, planes, stride, ibn)
  x = np.random.default_rng(0).normal(size=(3, 6, 4, inplanes)).astype(np.float32)
  model = Bottleneck(planes=planes, strides=stride, use_ibn=ibn == "a", train=train)
  init_shapes = jax.tree.map(lambda a: a.shape, model.init(jax.random.key(0), jnp.asarray(x)))
  assert init_shapes == jax.tree.map(lambda a: a.shape, variables)  # same names and shapes
  y = model.apply(variables, jnp.asarray(x), mutable=["batch_stats"] if train else False)
  y = y[0] if train else y
  np.testing.assert_allclose(np.asarray(y), _run_torch(block, x, train), rtol=1e-4, atol=1e-4)


def test_block_eca_gates_the_residual_branch_before_the_add():
  block, variables = _torch_block(16, 8, 1, "a", bn3_factor=0.5)
  x = np.random.default_rng(1).normal(size=(2, 4, 4, 16)).astype(np.float32)
  model = Bottleneck(planes=8, use_ibn=True, use_eca=True)
  init = model.init(jax.random.key(0), jnp.asarray(x))
  assert init["params"]["eca"]["conv"]["kernel"].shape == (3, 1, 1)
  variables["params"]["eca"] = {"conv": {"kernel": jnp.zeros((3, 1, 1))}}
  y = model.apply(variables, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y), _run_torch(block, x, False), rtol=1e-4, atol=1e-4)


def test_mhsa_block_replaces_conv2():
  x = jnp.zeros((1, 8, 4, 64))
  variables = Bottleneck(planes=16, strides=2, use_mhsa=True).init(jax.random.key(0), x)
  p = variables["params"]
  assert "conv2" not in p
  assert p["mhsa"]["rel_h"].shape == (15, 4) and p["mhsa"]["rel_w"].shape == (7, 4)
  assert {"conv1", "bn1", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"} <= set(p)
  y = Bottleneck(planes=16, strides=2, use_mhsa=True).apply(variables, x)
  assert y.shape == (1, 4, 2, 64)
