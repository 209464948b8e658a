"""FLOPs of the FSAF network counted from its layer shapes (no compile, no XLA).

Convention (stated wherever a GFLOP/s figure is printed):
  * one multiply-accumulate (MAC) = 2 FLOPs;
  * counted: every layer with a `kernel` parameter (convolutions, including the 1-D
    ECA conv and the MHSA query/key/value projections, and dense layers):
    output positions x kh x kw x Cin/groups x Cout
    (= output positions x kernel elements); and the attention matmuls of each
    MHSA block: q.k^T and weights.v (`N * heads * (HW)^2 * d` MACs each) and the
    relative-position logits (`N * heads * HW * (H + W) * d`);
  * not counted: normalisation, activations, pooling, softmax, residual adds,
    gathers (the test against XLA's cost analysis, on the tiny model at 64x32, finds
    the count 85-100% of XLA's);
  * forward pass only; a training step is taken as 3x the forward (forward, input
    gradient, weight gradient: the usual convention, e.g. Kaplan et al. 2020).

  counts = count_flops(model, (32, 256, 128, 3))
  counts.forward_flops, counts.train_flops, counts.by_kind()

The counter runs the model under `jax.eval_shape` with a Flax method interceptor that
records each layer's input/output/kernel shapes, so it follows the model code
(widths, strides, MHSA sites, fusion) without restating the architecture.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fsaf_jax.models.attention import MHSA

TRAIN_FACTOR = 3  # train step FLOPs = TRAIN_FACTOR x forward FLOPs (convention)


@dataclasses.dataclass(frozen=True)
class LayerCount:
  """MACs of one layer call.

  Attributes:
    path: module path, e.g. 'backbone/layer1_0/conv1'.
    kind: 'conv' (kernel with spatial dims), 'dense' (2-D kernel) or 'attention'
      (the MHSA matmuls; its projections are separate 'conv' entries).
    macs: multiply-accumulates of the call (whole batch).
  """

  path: str
  kind: str
  macs: int


@dataclasses.dataclass(frozen=True)
class FlopCount:
  """Per-layer MACs of one forward pass and the totals derived from them.

  Attributes:
    layers: one entry per layer call, in call order.
    batch_size: leading dimension of the input the count is for.
  """

  layers: tuple[LayerCount, ...]
  batch_size: int

  @property
  def forward_macs(self) -> int:
    return sum(layer.macs for layer in self.layers)

  @property
  def forward_flops(self) -> int:
    """2 x MACs of one forward pass over the batch."""
    return 2 * self.forward_macs

  @property
  def train_flops(self) -> int:
    """`TRAIN_FACTOR` x forward FLOPs: one training step over the batch."""
    return TRAIN_FACTOR * self.forward_flops

  def by_kind(self) -> dict[str, int]:
    """Forward FLOPs per layer kind ('conv', 'dense', 'attention')."""
    totals = collections.defaultdict(int)
    for layer in self.layers:
      totals[layer.kind] += 2 * layer.macs
    return dict(totals)


def _path(module: nn.Module) -> str:
  scope = module.scope
  return "/".join(scope.path) if scope is not None else (module.name or type(module).__name__)


def attention_macs(module: MHSA, x_shape: Sequence[int]) -> int:
  """MACs of the attention matmuls of `module` on input [N, H, W, C] (projections excluded).

  q.k^T and weights.v: N * heads * (HW)^2 * d each; relative logits (one einsum per
  axis): N * heads * HW * (H + W) * d; with d = features / heads.
  """
  n, height, width, _ = x_shape
  heads = module.num_heads
  d = module.features // heads
  positions = height * width
  content = n * heads * positions * positions * d
  relative = n * heads * positions * (height + width) * d
  return 2 * content + relative


def kernel_macs(kernel_shape: Sequence[int], out_shape: Sequence[int]) -> int:
  """MACs of a conv / dense layer: output positions x kernel elements.

  Args:
    kernel_shape: (*window, Cin / groups, Cout) (Flax layout; dense: (Cin, Cout)).
      A grouped conv's kernel already holds only Cin / groups input rows.
    out_shape: (*batch_and_positions, Cout).

  Returns:
    int MACs = prod(out_shape[:-1]) * prod(kernel_shape).
  """
  if kernel_shape[-1] != out_shape[-1]:
    raise ValueError(f"kernel {tuple(kernel_shape)} does not produce outputs {tuple(out_shape)}")
  return math.prod(out_shape[:-1]) * math.prod(kernel_shape)


def count_flops(
  model: nn.Module,
  input_shape: Sequence[int],
  *,
  variables: Any = None,
  train: bool = False,
  dtype: Any = jnp.float32,
) -> FlopCount:
  """Counts the forward MACs of `model` on an input of `input_shape` from layer shapes.

  Args:
    model: a Flax module called as `model.apply(variables, x, train=...)` (the FSAF
      network, or any module built from convs / dense layers / `MHSA`).
    input_shape: [N, H, W, 3].
    variables: the variables (arrays or `jax.ShapeDtypeStruct`s); default: the shapes
      `model.init` would create.
    train: count the train-mode forward (same FLOPs for FSAF: only norms differ).
    dtype: dtype of the abstract input.

  Returns:
    A `FlopCount` (nothing is compiled or executed: abstract evaluation only).
  """
  layers: list[LayerCount] = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name != "__call__":
      return out
    if isinstance(module, MHSA):
      layers.append(LayerCount(_path(module), "attention", attention_macs(module, args[0].shape)))
    elif module.has_variable("params", "kernel"):
      kernel = module.get_variable("params", "kernel")
      kind = "dense" if kernel.ndim == 2 else "conv"
      layers.append(LayerCount(_path(module), kind, kernel_macs(kernel.shape, out.shape)))
    return out

  x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
  if variables is None:
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  mutable = ["batch_stats", "intermediates"] if train else ["intermediates"]

  def forward(variables, x):
    with nn.intercept_methods(interceptor):
      return model.apply(variables, x, train=train, mutable=mutable)

  jax.eval_shape(forward, variables, x)
  return FlopCount(layers=tuple(layers), batch_size=int(input_shape[0]))
