"""PyTorch ResNet-IBN-a, written from the official IBN-Net definition (test-only reference).

Follows `ibnnet/resnet_ibn.py` and `ibnnet/modules.py` of XingangPan/IBN-Net
(`resnet50_ibn_a`), so its `state_dict()` keys are exactly those of the released
`resnet50_ibn_a-d9d0bb7b.pth`:

  conv1.weight, bn1.{weight,bias,running_mean,running_var,num_batches_tracked},
  layer{1..4}.{i}.conv{1,2,3}.weight,
  layer{s}.{i}.bn1.IN.{weight,bias}  and  layer{s}.{i}.bn1.BN.*   (IBN-a stages)
  layer{s}.{i}.bn1.*                                             (plain-BN stages)
  layer{1..4}.{i}.bn{2,3}.*, layer{1..4}.0.downsample.{0,1}.*, fc.{weight,bias}

Differences from the official code, none of which changes a key or a result:
  * `last_stride` (stride of layer4, as fast-reid / the BoT recipe; official: 2);
  * configurable block counts (`layers`), widths and stem width: a tiny variant exists;
  * `features` returns the stage outputs; the global average pooling of `forward` is
    adaptive (official `AvgPool2d(7)` assumes 224x224);
  * IBN splits with explicit sizes and without `.contiguous()`, so a model converted
    to `torch.channels_last` stays channels-last (same values).
With `ibn_cfg=(None,) * 4` it is a torchvision-style plain ResNet (keys `bn1.weight`
instead of `bn1.IN/BN`), v1.5 (stride on the 3x3 conv) like torchvision.

This file is only imported by tests and benchmarks; the library never imports torch.
"""

import math
from collections.abc import Sequence

import torch
from torch import nn

EXPANSION = 4


class IBN(nn.Module):
  """Instance-Batch Normalization (IBN-a): InstanceNorm on the first `int(planes * ratio)`
  channels (affine, no running statistics), BatchNorm on the rest.

  Takes and returns [N, planes, H, W].
  """

  def __init__(self, planes: int, ratio: float = 0.5):
    super().__init__()
    self.half = int(planes * ratio)
    self.IN = nn.InstanceNorm2d(self.half, affine=True)
    self.BN = nn.BatchNorm2d(planes - self.half)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x_in, x_bn = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
    return torch.cat((self.IN(x_in), self.BN(x_bn)), dim=1)


class BottleneckIBN(nn.Module):
  """ResNet bottleneck, IBN-a or BN in `bn1`: [N, inplanes, H, W] -> [N, 4 planes, H/s, W/s]."""

  def __init__(
    self,
    inplanes: int,
    planes: int,
    ibn: str | None = None,
    stride: int = 1,
    downsample: nn.Module | None = None,
  ):
    super().__init__()
    if ibn not in (None, "a"):
      raise ValueError(f"only IBN-a (ibn='a') or plain BN (None) is implemented, got {ibn!r}")
    self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
    self.bn1 = IBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * EXPANSION, kernel_size=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample
    self.stride = stride

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    residual = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + residual)


class ResNetIBN(nn.Module):
  """ResNet-IBN-a (`resnet50_ibn_a` with the defaults).

  Args:
    layers: bottlenecks in layer1..layer4 (Conv2_x..Conv5_x); the official name.
    widths: bottleneck planes of layer1..layer4; stage outputs are 4x these.
    stem_width: channels of the 7x7 stem conv.
    ibn_cfg: per stage 'a' (IBN-a in every bottleneck's `bn1`) or None (BatchNorm).
    last_stride: stride of layer4 (1 or 2).
    num_classes: outputs of `fc`.
  """

  def __init__(
    self,
    layers: Sequence[int] = (3, 4, 6, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    stem_width: int = 64,
    ibn_cfg: Sequence[str | None] = ("a", "a", "a", None),
    last_stride: int = 2,
    num_classes: int = 1000,
  ):
    super().__init__()
    if not (len(layers) == len(widths) == len(ibn_cfg) == 4):
      raise ValueError("layers, widths and ibn_cfg need one entry per stage (4)")
    self.inplanes = stem_width
    self.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    strides = (1, 2, 2, last_stride)
    for s in range(4):
      layer = self._make_layer(widths[s], layers[s], stride=strides[s], ibn=ibn_cfg[s])
      self.add_module(f"layer{s + 1}", layer)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(widths[3] * EXPANSION, num_classes)

    # Official init: convs normal(0, sqrt(2 / (k * k * out_channels))), norms (1, 0).
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        m.weight.data.normal_(0, math.sqrt(2.0 / n))
      elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
        m.weight.data.fill_(1)
        m.bias.data.zero_()

  def _make_layer(self, planes: int, blocks: int, stride: int, ibn: str | None) -> nn.Sequential:
    downsample = None
    if stride != 1 or self.inplanes != planes * EXPANSION:
      downsample = nn.Sequential(
        nn.Conv2d(self.inplanes, planes * EXPANSION, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(planes * EXPANSION),
      )
    layers = [BottleneckIBN(self.inplanes, planes, ibn, stride, downsample)]
    self.inplanes = planes * EXPANSION
    layers += [BottleneckIBN(self.inplanes, planes, ibn) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stage outputs of images [N, 3, H, W].

    Returns:
      dict 'stem' (after the max-pool), 'layer1'..'layer4' (= Conv2_x..Conv5_x), NCHW.
    """
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    outputs = {"stem": x}
    for s in range(1, 5):
      x = getattr(self, f"layer{s}")(x)
      outputs[f"layer{s}"] = x
    return outputs

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Images [N, 3, H, W] -> ImageNet logits [N, num_classes] (the official forward)."""
    x = self.features(x)["layer4"]
    return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50_ibn_a(last_stride: int = 2, **kwargs) -> ResNetIBN:
  """The official ResNet50-IBN-a (layer4 stride `last_stride`)."""
  return ResNetIBN(layers=(3, 4, 6, 3), last_stride=last_stride, **kwargs)


def resnet50(last_stride: int = 2, **kwargs) -> ResNetIBN:
  """A torchvision-style plain ResNet-50 (v1.5, same state_dict keys as torchvision)."""
  return ResNetIBN(layers=(3, 4, 6, 3), ibn_cfg=(None,) * 4, last_stride=last_stride, **kwargs)


def resnet_ibn_a_tiny(last_stride: int = 2, **kwargs) -> ResNetIBN:
  """Tiny ResNet-IBN-a with the layout of `configs/tiny.py` (stem 8, widths 8..64, 2 blocks)."""
  kwargs.setdefault("layers", (2, 2, 2, 2))
  kwargs.setdefault("widths", (8, 16, 32, 64))
  kwargs.setdefault("stem_width", 8)
  kwargs.setdefault("num_classes", 10)
  return ResNetIBN(last_stride=last_stride, **kwargs)
