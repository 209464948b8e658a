"""The data-parallel training step: a pure function, jitted over a 1-D device mesh.

`train_step(state, batch, ...)` normalises the uint8 images on device, runs the model in
train mode (BatchNorm on batch statistics, `batch_stats` updated), computes the ReID
loss (`fsaf_jax.losses.reid_loss`), its gradients, and one optimiser step.

It is written for the global view: `make_train_step` jits it with the state replicated
and the batch sharded along the mesh's `'data'` axis. The code sees the *global* batch,
so BatchNorm statistics and the triplet loss's hardest positives / negatives are taken
over all devices of all processes (XLA inserts the cross-device reductions), and a step
on N devices computes the same numbers as on one device (up to float summation order).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from fsaf_jax.core.compiler_options import train_compiler_options
from fsaf_jax.core.mesh import batch_sharding, check_batch_divisible, replicated
from fsaf_jax.losses.reid_loss import reid_loss
from fsaf_jax.models.preprocessing import normalize_images
from fsaf_jax.training.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  model: nn.Module,
  loss_config: ml_collections.ConfigDict,
) -> tuple[TrainState, Metrics]:
  """One optimisation step on a batch (not jitted; see `make_train_step`).

  Args:
    state: the train state.
    batch: `'image'` uint8 [B, H, W, 3], `'label'` int32 [B] (0..num_classes-1); other
      keys are ignored.
    model: the FSAF module; its `dtype` is the compute dtype of the images.
    loss_config: `config.loss`.

  Returns:
    `(new_state, metrics)`; metrics are float32 scalars: `'loss'` (weighted total), the
    unweighted parts (`'ce'`, `'triplet'`, `'center'` if on), `'accuracy'` (top-1 of the
    logits on the batch), `'lr'` (the lr used by this step), `'grad_norm'` (global L2
    norm of the model parameters' gradients, before weight decay) and `'param_norm'`
    (of the model parameters).
  """
  images = normalize_images(batch["image"], getattr(model, "dtype", jnp.float32))
  labels = batch["label"]

  def loss_fn(trainable):
    variables = {"params": trainable["model"], "batch_stats": state.batch_stats}
    outputs, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    total, parts = reid_loss(outputs, labels, loss_config, trainable["loss"])
    return total, (parts, updates["batch_stats"], outputs["logits"])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (parts, batch_stats, logits)), grads = grad_fn(state.trainable)
  # The loss terms' optimisers see the gradient of the weighted total (the centres'
  # rescales it to the unweighted centre loss, as BoT: `losses.center.center_optimizer`).
  new_state = state.apply_gradients(grads, batch_stats)

  metrics = {"loss": loss, **parts}
  metrics["accuracy"] = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
  metrics["lr"] = jnp.asarray(state.lr_schedule(state.step), jnp.float32)
  metrics["grad_norm"] = optax.tree.norm(grads["model"])
  metrics["param_norm"] = optax.tree.norm(new_state.params)
  return new_state, {k: v.astype(jnp.float32) for k, v in metrics.items()}


def make_train_step(
  model: nn.Module,
  loss_config: ml_collections.ConfigDict,
  mesh: Mesh,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """`train_step` jitted over `mesh`: state replicated, batch sharded on 'data', with
  the mesh platform's compiler options (`fsaf_jax.core.compiler_options`: on the CPU,
  XLA's own convolution kernel; none on GPU / TPU).

  Args:
    model: the FSAF module.
    loss_config: `config.loss`.
    mesh: the 1-D data mesh (`fsaf_jax.core.mesh.make_mesh`).

  Returns:
    `step(state, batch) -> (state, metrics)`. The input state is donated (its buffers
    are reused: don't use it afterwards). `batch` holds global arrays (or, single
    process, host arrays of the global batch); its batch size must be a multiple of
    the mesh size, else ValueError naming both. Metrics are replicated scalars.
  """
  options = train_compiler_options(mesh.devices.flat[0].platform)
  jitted = jax.jit(
    functools.partial(train_step, model=model, loss_config=loss_config),
    in_shardings=(replicated(mesh), batch_sharding(mesh)),
    out_shardings=(replicated(mesh), replicated(mesh)),
    donate_argnums=0,
    compiler_options=options,
  )

  def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    check_batch_divisible(batch["image"].shape[0], mesh)
    return jitted(state, {"image": batch["image"], "label": batch["label"]})

  step.jitted = jitted  # for .lower() / cost analysis
  step.compiler_options = options
  return step


def check_finite_metrics(metrics: Mapping[str, Any], step: int, keys: tuple[str, ...] = ("loss",)):
  """Raises FloatingPointError if a metric is NaN or infinite.

  Args:
    metrics: the step's metrics (jax or numpy scalars; fetched to the host here).
    step: the step they belong to (for the message).
    keys: the metrics to check (default the total loss).
  """
  for key in keys:
    value = float(metrics[key])
    if not math.isfinite(value):
      others = {k: float(v) for k, v in metrics.items() if k != key}
      raise FloatingPointError(
        f"{key} is {value} at step {step}; stopping (other metrics: {others}). Lower "
        "config.optim.base_lr, check the input images and labels, or resume from the "
        "last checkpoint."
      )
