"""Peak dense FLOP/s per JAX device by device kind, for model FLOP utilisation (MFU).

MFU = the model's FLOPs per step (`benchmarks/flops.py`) / step time / (peak per
device x devices). The peaks are the vendors' published dense (no sparsity) figures per
JAX device: a chip on TPU v4 and later (one device per chip), a core on TPU v2 / v3 (two
devices per chip), a GPU. float32 on TPU runs its matmuls as bfloat16 passes, so the
bfloat16 peak is used; float32 on Ampere and later GPUs counts against the TF32 peak
(XLA's default matmul precision there). Unknown kinds (and CPUs) give None: the table
prints no MFU rather than a guess.
"""

from __future__ import annotations

import re

# (regular expression searched in `device.device_kind`, lower-cased; peak FLOP/s for
# 'bfloat16', 'float32'). The first matching entry wins: more specific names first.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
  ("tpu v6 lite", {"bfloat16": 918e12, "float32": 918e12}),
  ("tpu v6e", {"bfloat16": 918e12, "float32": 918e12}),
  ("tpu v5 lite", {"bfloat16": 197e12, "float32": 197e12}),
  ("tpu v5e", {"bfloat16": 197e12, "float32": 197e12}),
  ("tpu v5p", {"bfloat16": 459e12, "float32": 459e12}),
  ("tpu v5", {"bfloat16": 459e12, "float32": 459e12}),
  ("tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
  ("tpu v3", {"bfloat16": 61.5e12, "float32": 61.5e12}),
  ("tpu v2", {"bfloat16": 22.5e12, "float32": 22.5e12}),
  ("h100 pcie", {"bfloat16": 756e12, "float32": 378e12}),
  ("h100", {"bfloat16": 989e12, "float32": 494e12}),
  ("a100", {"bfloat16": 312e12, "float32": 156e12}),
  (r"\bl4\b", {"bfloat16": 121e12, "float32": 60e12}),
  ("v100", {"float32": 15.7e12}),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Peak dense FLOP/s of one device of `device_kind` computing in `dtype`, or None.

  Args:
    device_kind: `jax.devices()[0].device_kind`, e.g. 'TPU v4', 'NVIDIA A100-SXM4-40GB'.
    dtype: the compute dtype, 'float32' or 'bfloat16'.
  """
  kind = device_kind.lower()
  for pattern, peaks in PEAKS:
    if re.search(pattern, kind):
      return peaks.get(dtype)
  return None


def mfu(flops: float, seconds: float, device_kind: str, dtype: str, num_devices: int):
  """Model FLOP utilisation in [0, 1] of `flops` done in `seconds` on `num_devices`.

  Returns None when the peak of `device_kind` / `dtype` is not in the table.
  """
  peak = peak_flops(device_kind, dtype)
  if peak is None or seconds <= 0 or num_devices <= 0:
    return None
  return flops / seconds / (peak * num_devices)
