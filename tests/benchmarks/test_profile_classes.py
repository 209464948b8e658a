"""Classes of `benchmarks/profile_step.py`: XLA instructions of a real compiled gradient,
PyTorch ops of a real profiled convolution, and the rows both are compared on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax

from benchmarks.profile_classes import (
  COMPARED,
  TORCH_CLASSES,
  classify,
  compared_class,
  parse_entry,
  torch_by_class,
)
from benchmarks.torch_reference import op_self_times


def _conv_relu_loss(x, kernel):
  y = lax.conv_general_dilated(
    x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return jnp.sum(jax.nn.relu(y) ** 2)


def test_classes_of_a_compiled_convolution_gradient():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32)
  kernel = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, 4, 8)), jnp.float32)
  grad = jax.jit(jax.value_and_grad(_conv_relu_loss, argnums=(0, 1)))
  insts = parse_entry(grad.lower(x, kernel).compile().as_text())
  kernel_shapes = {tuple(sorted(kernel.shape)), tuple(sorted((3 * 3 * 4, 8)))}
  classes = [classify(info, kernel_shapes) for info in insts.values()]
  # One forward convolution, its input gradient and its weight gradient, nothing else
  # counted as a matmul; the ReLU and its gradient are not matmuls.
  assert sorted(c for c in classes if c.startswith("matmul")) == [
    "matmul dW",
    "matmul dX",
    "matmul fwd",
  ]
  assert any(not c.startswith("matmul") for c in classes)
  rows = {compared_class(c) for c in classes}
  assert {"matmul fwd", "matmul dX + dW", "everything else"} <= rows
  assert rows <= set(COMPARED)


def test_torch_rows_hand_computed():
  self_times = {
    "aten::mkldnn_convolution": 2.0,
    "aten::convolution_backward": 5.0,
    "aten::addmm": 0.25,
    "aten::mm": 0.5,
    "aten::native_batch_norm": 0.75,
    "aten::native_batch_norm_backward": 0.5,
    "aten::threshold_backward": 0.125,
  }
  assert torch_by_class(self_times) == {
    "matmul fwd": 2.0,
    "matmul dX + dW": 5.0,
    "dense matmul (fwd + grads)": 0.75,
    "everything else": 1.375,
  }


def test_torch_op_names_are_the_ones_torch_profiles():
  """The aten names of `TORCH_CLASSES` are those this torch records for a float32 CPU
  convolution's forward and backward (a renamed op would silently fall into 'everything
  else')."""
  x = torch.randn(2, 4, 16, 8, requires_grad=True)
  conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
  bn = torch.nn.BatchNorm2d(8)

  def step():
    bn(conv(x)).square().sum().backward()

  step()
  self_times = op_self_times(step)
  rows = torch_by_class(self_times)
  assert rows["matmul fwd"] > 0 and rows["matmul dX + dW"] > 0, sorted(self_times)
  assert any(TORCH_CLASSES.get(op) == "batch / instance norm" for op in self_times)
  assert sum(rows.values()) == pytest.approx(sum(self_times.values()))
