"""Test helpers for PyTorch-parity tests of the model: randomised norms, key mapping.

Used with `tests.reference.torch_resnet_ibn`. The product converter is
`fsaf_jax.convert_ibn`; this minimal mapping exists so model tests do not depend on it.
"""

import numpy as np
import torch
from torch import nn


def randomize_norms_(module: nn.Module, seed: int = 0) -> None:
  """Gives every BN/IN non-trivial affine parameters and running statistics, in place."""
  gen = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d):
      c = m.num_features
      m.weight.data = 0.5 + torch.rand(c, generator=gen)
      m.bias.data = 0.2 * torch.randn(c, generator=gen)
      if m.running_mean is not None:
        m.running_mean.data = 0.2 * torch.randn(c, generator=gen)
        m.running_var.data = 0.5 + torch.rand(c, generator=gen)


def to_flax(state_dict: dict[str, torch.Tensor]) -> dict:
  """Maps a backbone state_dict onto the Flax variable tree of the naming contract.

  `layer{s}.{i}.X` -> `layer{s}_{i}/X`, `downsample.0/1` -> `downsample_conv/bn`;
  conv OIHW -> HWIO; BN weight/bias -> scale/bias (params), running_mean/var ->
  mean/var (batch_stats); `num_batches_tracked` and `fc.*` are skipped.

  Returns:
    {'params': ..., 'batch_stats': ...}: nested dicts of numpy arrays, without the
    'backbone' level.
  """
  params, stats = {}, {}
  for key, value in state_dict.items():
    if key.endswith("num_batches_tracked") or key.startswith("fc."):
      continue
    parts = key.split(".")
    if parts[0].startswith("layer"):
      parts = [f"{parts[0]}_{parts[1]}", *parts[2:]]
      if parts[1] == "downsample":
        parts = [parts[0], "downsample_conv" if parts[2] == "0" else "downsample_bn", parts[3]]
    *path, leaf = parts
    array = value.detach().numpy()
    if leaf == "weight" and array.ndim == 4:
      tree, name, array = params, "kernel", array.transpose(2, 3, 1, 0)
    elif leaf in ("weight", "bias"):
      tree, name = params, {"weight": "scale", "bias": "bias"}[leaf]
    else:
      tree, name = stats, {"running_mean": "mean", "running_var": "var"}[leaf]
    node = tree
    for p in path:
      node = node.setdefault(p, {})
    node[name] = np.asarray(array)
  return {"params": params, "batch_stats": stats}
