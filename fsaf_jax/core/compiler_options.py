"""XLA compiler options of the jitted steps, chosen by backend (CPU only).

On the CPU backend jaxlib hands each convolution, each dot and each reduction to
YNNPACK on its own ("individual" library fusions, the default list of
`xla_cpu_experimental_ynn_fusion_type`) and runs the BatchNorm / ReLU / residual-add
epilogues as separate XLA loops.

**Train step** (`train_compiler_options`): the same list without
`LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`, so XLA runs the convolutions (forward and
both gradients) with its own multi-threaded convolution kernel, and dots and reductions
still in YNNPACK. YNNPACK's convolution does not use a second thread when the input
has 64 channels or fewer (ResNet-50's stem and Conv2_x, their gradients included),
which on all cores left a fixed part of the step single-threaded; XLA's own kernel
splits those too and is as fast on one thread. The train step is then faster on all
cores and no slower on one (docs/performance.md has the timings per convolution and the
step times; `benchmarks/conv_kernels.py`, `benchmarks/train_options.py` measure them).

**Inference** (`inference_compiler_options`): `LIBRARY_FUSION_TYPE_DOT` lets YNNPACK
take a dot together with its elementwise neighbours (and, as above, leaves the
convolutions to XLA): a faster ResNet50-IBN-a extractor (`python
benchmarks/profile_step.py --what=extract --batch=64` with and without
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot`), with the same embeddings. The
same option makes the *train* step markedly slower (the backward graph fuses badly),
so it is applied only to inference jits.

Values are unchanged up to float summation order (tests/fsaf_jax/core/
test_compiler_options.py). GPU / TPU get no options. These are experimental XLA debug
options: each set is checked once per process by compiling a tiny dot, and a jaxlib
that rejects it gets no options, with a warning, rather than a failed step.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

CPU_INFERENCE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}
# jaxlib's default list (dots, convolutions and reductions one by one) minus the
# convolutions. The list is given whole: the '-' form of XLA_FLAGS is not accepted here.
CPU_TRAIN_OPTIONS = {
  "xla_cpu_experimental_ynn_fusion_type": (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
  )
}


@functools.cache
def _accepted(items: tuple[tuple[str, Any], ...]) -> bool:
  """Whether this jaxlib's CPU compiler accepts the options (compiles a tiny dot)."""
  try:
    x = jax.device_put(jnp.ones((2, 2), jnp.float32), jax.devices("cpu")[0])
    jax.jit(jnp.matmul, compiler_options=dict(items)).lower(x, x).compile()
  except Exception as e:  # an unknown option / enum value: jaxlib changed
    logging.warning("XLA CPU options %s not accepted (%s); using none", items, e)
    return False
  return True


def _for_platform(platform: str, options: dict[str, Any]) -> dict[str, Any] | None:
  if platform != "cpu":
    return None
  if not _accepted(tuple(sorted(options.items()))):
    return None
  return dict(options)


def inference_compiler_options(platform: str) -> dict[str, Any] | None:
  """Compiler options for `jax.jit(..., compiler_options=...)` of an inference step.

  Args:
    platform: the backend the step runs on ('cpu', 'gpu', 'tpu', ...), e.g.
      `jax.default_backend()` or a mesh device's `.platform`.

  Returns:
    `CPU_INFERENCE_OPTIONS` on the CPU when this jaxlib accepts them, else None.
  """
  return _for_platform(platform, CPU_INFERENCE_OPTIONS)


def train_compiler_options(platform: str) -> dict[str, Any] | None:
  """Compiler options for `jax.jit(..., compiler_options=...)` of the train step.

  Args:
    platform: the backend the step runs on, e.g. a mesh device's `.platform`.

  Returns:
    `CPU_TRAIN_OPTIONS` on the CPU when this jaxlib accepts them, else None.
  """
  return _for_platform(platform, CPU_TRAIN_OPTIONS)
