"""XLA compiler options for the inference (feature-extraction) step, chosen by backend.

On the CPU backend jaxlib sends each convolution and each dot to YNNPACK on its own
("individual" library fusions) and runs the BatchNorm / ReLU / residual-add epilogues as
separate XLA loops. `xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT`
lets YNNPACK take a dot or convolution *together with* its elementwise neighbours,
which saves a pass over every feature map: a faster ResNet50-IBN-a extractor (the
option set through XLA_FLAGS on a plain jit does the same: `python
benchmarks/profile_step.py --what=extract --batch=64` with and without
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot`; figures in docs/performance.md),
with the same embeddings (tests/fsaf_jax/evaluation/test_compiler_options.py). The same
option makes the *train* step markedly slower (as a per-jit option, and with
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=dot python benchmarks/run.py --quick
--skip_sections=extract,torch,evaluation,pipeline`: the backward graph fuses badly), so it
is applied only to inference jits, and only on the CPU. GPU / TPU get no options.

The option is an experimental XLA debug option: `inference_compiler_options` checks
once per process that this jaxlib accepts it (compiling a 2x2 product) and otherwise
returns no options, with a warning, rather than failing the extraction.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

CPU_INFERENCE_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


@functools.cache
def _accepted(items: tuple[tuple[str, Any], ...]) -> bool:
  """Whether this jaxlib's CPU compiler accepts the options (compiles a tiny dot)."""
  try:
    x = jax.device_put(jnp.ones((2, 2), jnp.float32), jax.devices("cpu")[0])
    jax.jit(jnp.matmul, compiler_options=dict(items)).lower(x, x).compile()
  except Exception as e:  # an unknown option / enum value: jaxlib changed
    logging.warning("XLA CPU inference options %s not accepted (%s); using none", items, e)
    return False
  return True


def inference_compiler_options(platform: str) -> dict[str, Any] | None:
  """Compiler options for `jax.jit(..., compiler_options=...)` of an inference step.

  Args:
    platform: the backend the step runs on ('cpu', 'gpu', 'tpu', ...), e.g.
      `jax.default_backend()` or a mesh device's `.platform`.

  Returns:
    `CPU_INFERENCE_OPTIONS` on the CPU when this jaxlib accepts them, else None.
  """
  if platform != "cpu":
    return None
  if not _accepted(tuple(sorted(CPU_INFERENCE_OPTIONS.items()))):
    return None
  return dict(CPU_INFERENCE_OPTIONS)
