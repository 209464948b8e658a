"""The ResNet bottleneck of IBN-Net `resnet50_ibn_a`, with the FSAF options.

conv1 1x1 (planes) -> bn1 (IBN-a or BN) -> ReLU -> conv2 3x3 stride s pad 1 (or
BoTNet MHSA, 2x2 average pool when s = 2) -> bn2 -> ReLU -> conv3 1x1 (4 * planes)
-> bn3 [-> ECA when `use_eca`] -> + shortcut -> ReLU. The shortcut is a 1x1 conv with
stride s + BN (`downsample_conv`, `downsample_bn`) when the shape changes, as the
PyTorch `downsample.0` / `downsample.1`. The stride sits on the 3x3 conv (v1.5).
1x1 convs are `Conv1x1` (matmul form, same (1, 1, Cin, Cout) kernel as a conv); the
3x3 conv is `nn.Conv` with `conv.conv_general_dilated` (an im2col matmul on the CPU at
feature maps smaller than its window, where XLA:CPU's convolution is slow).
"""

import functools
from typing import Any

import flax.linen as nn
import flax.traverse_util
import jax.numpy as jnp

from fsaf_jax.models.attention import MHSA
from fsaf_jax.models.conv import conv_general_dilated
from fsaf_jax.models.conv1x1 import Conv1x1
from fsaf_jax.models.eca import ECA
from fsaf_jax.models.ibn import IBN
from fsaf_jax.models.norm import BatchNorm

ModuleDef = Any
EXPANSION = 4

# PyTorch IBN-Net init of convs: normal(0, sqrt(2 / (k * k * out_channels))).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nn.Module):
  """One bottleneck block on [N, H, W, C] features.

  Attributes:
    planes: bottleneck width; the block outputs `4 * planes` channels.
    strides: stride of the 3x3 conv (or MHSA pool) and of the shortcut conv.
    use_ibn: `bn1` is IBN-a instead of BatchNorm.
    use_mhsa: the 3x3 conv `conv2` is replaced by BoTNet MHSA (`mhsa`).
    use_eca: ECA (`eca`) on the residual branch before the add.
    num_heads: MHSA heads.
    train: BatchNorm uses batch statistics (and updates its running averages).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """

  planes: int
  strides: int = 1
  use_ibn: bool = False
  use_mhsa: bool = False
  use_eca: bool = False
  num_heads: int = 4
  train: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """[N, H, W, C] -> [N, H/s, W/s, 4 * planes]."""
    conv = functools.partial(
      nn.Conv,
      use_bias=False,
      conv_general_dilated=conv_general_dilated,  # im2col matmul at small maps on CPU
      kernel_init=conv_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    conv1x1 = functools.partial(
      Conv1x1, kernel_init=conv_kernel_init, dtype=self.dtype, param_dtype=self.param_dtype
    )
    norm_kwargs = dict(
      use_running_average=not self.train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )
    norm = functools.partial(BatchNorm, **norm_kwargs)
    norm1 = functools.partial(IBN, **norm_kwargs) if self.use_ibn else norm
    out_features = self.planes * EXPANSION

    y = conv1x1(self.planes, name="conv1")(x)
    y = nn.relu(norm1(name="bn1")(y))
    if self.use_mhsa:
      y = MHSA(
        self.planes,
        num_heads=self.num_heads,
        strides=self.strides,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name="mhsa",
      )(y)
    else:
      y = conv(
        self.planes,
        (3, 3),
        strides=(self.strides, self.strides),
        padding=((1, 1), (1, 1)),
        name="conv2",
      )(y)
    y = nn.relu(norm(name="bn2")(y))
    y = conv1x1(out_features, name="conv3")(y)
    y = norm(name="bn3")(y)
    if self.use_eca:
      y = ECA(dtype=self.dtype, param_dtype=self.param_dtype, name="eca")(y)

    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_features:
      shortcut = conv1x1(out_features, strides=self.strides, name="downsample_conv")(x)
      shortcut = norm(name="downsample_bn")(shortcut)
    return nn.relu(y + shortcut)


def zero_attention_last_bn(params: Any) -> Any:
  """Sets the last BatchNorm scale (`bn3/scale`) of every MHSA bottleneck to 0.

  BoTNet's initialisation: with a zero scale the attention branch adds nothing at the
  start, so a randomly initialised MHSA inside an ImageNet-pretrained trunk begins as an
  identity residual (the shortcut) instead of noise. Blocks without MHSA keep theirs.

  Args:
    params: the model parameters (`variables['params']`), arrays of any sharding.

  Returns:
    The same tree with those scales replaced by zeros (same shape, dtype, sharding
    when called under `jax.jit` with the input's sharding).
  """
  flat = flax.traverse_util.flatten_dict(params)
  modules = {path[:i] for path in flat for i in range(1, len(path))}
  for path in flat:
    if path[-2:] == ("bn3", "scale") and (*path[:-2], "mhsa") in modules:
      flat[path] = jnp.zeros_like(flat[path])
  return flax.traverse_util.unflatten_dict(flat)
