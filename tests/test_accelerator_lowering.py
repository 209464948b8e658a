"""Accelerator readiness without an accelerator: the full-size FSAF's jitted train step
and feature extractor lower for TPU and CUDA (`jax.export`, no hardware needed) with no
CPU-only custom call or host callback, and take the portable paths there.

The CPU-only choices are made per platform, not per host: the max-pool gradient
(`lax.platform_dependent` in `fsaf_jax/models/max_pool.py`), the im2col form of the 3x3
conv at small maps (`fsaf_jax/models/conv.py`; its export for TPU / CUDA is checked in
tests/fsaf_jax/models/test_conv.py: the 256x128 step here has no such map), the
XLA options of
the train step and the extractor (`train_compiler_options(platform)`,
`inference_compiler_options(platform)`) and the host allocator (CPU backend only).
"""

import re

import jax
import numpy as np
import pytest

from configs import fsaf_market
from fsaf_jax.core import compiler_options, host_allocator
from fsaf_jax.core.mesh import batch_sharding, make_mesh, replicated
from fsaf_jax.evaluation.extractor import make_embed_fn
from fsaf_jax.models import registry
from fsaf_jax.training.train_state import create_train_state
from fsaf_jax.training.train_step import make_train_step

ACCELERATORS = ("tpu", "cuda")
# Custom calls that are sharding annotations, not kernels: portable.
PORTABLE_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
NUM_CLASSES = 751
BATCH = 8  # P x K = 4 x 2, divisible by the simulated devices


def _custom_calls(module: str) -> set[str]:
  return set(re.findall(r"custom_call\s*@([\w.]+)", module)) | set(
    re.findall(r'call_target_name\s*=\s*"([^"]+)"', module)
  )


@pytest.fixture(scope="module")
def setup():
  config = fsaf_market.get_config()  # ResNet50-IBN-a + MHSA + ECA + fusion, 256x128
  config.train.steps_per_epoch = 185
  model = registry.create_model(config.model, NUM_CLASSES)
  mesh = make_mesh()
  h, w = config.input.image_size
  state = jax.eval_shape(
    lambda: create_train_state(config, model, jax.random.key(0), NUM_CLASSES, (h, w), mesh=mesh)
  )
  images = jax.ShapeDtypeStruct((BATCH, h, w, 3), np.uint8, sharding=batch_sharding(mesh))
  labels = jax.ShapeDtypeStruct((BATCH,), np.int32, sharding=batch_sharding(mesh))
  return config, model, mesh, state, images, labels


def test_train_step_lowers_for_accelerators_without_cpu_only_code(setup):
  config, model, mesh, state, images, labels = setup
  step = make_train_step(model, config.loss, mesh)
  exported = jax.export.export(step.jitted, platforms=ACCELERATORS)(
    state, {"image": images, "label": labels}
  )
  assert tuple(exported.platforms) == ACCELERATORS
  assert exported.nr_devices == mesh.size
  module = exported.mlir_module()
  assert _custom_calls(module) <= PORTABLE_CUSTOM_CALLS, _custom_calls(module)
  assert "callback" not in module.lower()
  # The portable max pool: reduce_window with its select_and_scatter gradient (the CPU
  # lowering of the same step has neither: tests/fsaf_jax/models/test_max_pool.py).
  assert "select_and_scatter" in module and "reduce_window" in module


def test_extractor_lowers_for_accelerators_without_cpu_only_code(setup):
  config, model, mesh, state, images, _ = setup
  embed = make_embed_fn(model, flip=True)
  fn = jax.jit(
    embed,
    in_shardings=(replicated(mesh), batch_sharding(mesh)),
    out_shardings=batch_sharding(mesh),
  )
  exported = jax.export.export(fn, platforms=ACCELERATORS)(state.variables, images)
  module = exported.mlir_module()
  assert _custom_calls(module) <= PORTABLE_CUSTOM_CALLS, _custom_calls(module)
  assert "callback" not in module.lower()
  out = exported.out_avals[0]
  assert out.shape == (BATCH, 512 + 1024 + 2048) and out.dtype == np.float32


def test_cpu_only_settings_are_chosen_per_platform(monkeypatch):
  for platform in ("tpu", "gpu", "cuda"):
    assert compiler_options.inference_compiler_options(platform) is None
    assert compiler_options.train_compiler_options(platform) is None
  # The host allocator follows the backend a process is going to start.
  from jax._src import xla_bridge

  monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert not host_allocator.will_run_on_cpu()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert host_allocator.will_run_on_cpu()
