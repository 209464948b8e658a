"""MFU of the benchmark table: peak lookup by device kind, hand-computed utilisation."""

import pytest

from benchmarks.peak_flops import mfu, peak_flops


@pytest.mark.parametrize(
  "kind, dtype, peak",
  [
    ("TPU v4", "bfloat16", 275e12),
    ("TPU v5 lite", "float32", 197e12),
    ("TPU v5p", "bfloat16", 459e12),
    ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("NVIDIA A100 80GB PCIe", "float32", 156e12),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA L4", "bfloat16", 121e12),
    ("NVIDIA L40S", "bfloat16", None),  # not the L4: unknown, no guess
    ("Tesla V100-SXM2-16GB", "bfloat16", None),
    ("cpu", "float32", None),
  ],
)
def test_peak_by_device_kind(kind, dtype, peak):
  assert peak_flops(kind, dtype) == peak


def test_mfu_hand_computed():
  # 513 GFLOP per step in 0.5 s on 4 TPU v4 chips: 1.026e12 / (4 x 275e12) = 0.0933%.
  assert mfu(513e9, 0.5, "TPU v4", "bfloat16", 4) == pytest.approx(513e9 / 0.5 / (4 * 275e12))
  assert mfu(513e9, 0.5, "cpu", "float32", 1) is None
