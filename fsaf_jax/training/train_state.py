"""The train state: step, parameters, BatchNorm statistics, optimiser state (+ centres).

A `flax.struct` dataclass, so it is a pytree: jit, sharding and orbax checkpointing see
the arrays (`step`, `params`, `batch_stats`, `opt_state`, `centers`,
`center_opt_state`); the optimisers and the lr schedule are static fields.

`init_variables` initialises the model under `jax.jit` with replicated output
shardings over the mesh (every device of every process holds the same copy, created
in place: nothing is built on one host and broadcast), loads ImageNet weights
(`config.init.pretrained`) and zero-initialises the last BatchNorm scale of the
attention blocks (BoTNet); `create_train_state` adds the BoT optimiser for the run's
`steps_per_epoch`. `check_initialisation` refuses an empty `config.init.pretrained`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from data_pipelines import errors
from fsaf_jax.core.mesh import make_mesh, replicated
from fsaf_jax.losses.center import init_centers
from fsaf_jax.models import pretrained as pretrained_lib
from fsaf_jax.models.bottleneck import zero_attention_last_bn
from fsaf_jax.training.optimizer import create_optimizer

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters (`variables['params']`).
    batch_stats: BatchNorm running statistics (`variables['batch_stats']`).
    opt_state: state of `tx`.
    centers: centre-loss centres [num_classes, C] float32, or None when
      `config.loss.center_weight == 0`.
    center_opt_state: state of `center_tx`, or None.
    tx: the model optimiser (static).
    center_tx: SGD for the centres (static), or None.
    lr_schedule: `step -> lr` used by `tx` (static; for logging).
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  centers: jax.Array | None
  center_opt_state: optax.OptState | None
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  center_tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False)
  lr_schedule: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)

  @property
  def variables(self) -> dict[str, PyTree]:
    """`{'params', 'batch_stats'}`, what `model.apply` takes."""
    return {"params": self.params, "batch_stats": self.batch_stats}

  def apply_gradients(
    self,
    grads: PyTree,
    batch_stats: PyTree,
    center_grads: jax.Array | None = None,
  ) -> TrainState:
    """One optimiser step.

    Args:
      grads: gradients of the loss w.r.t. `params` (same tree).
      batch_stats: the BatchNorm statistics updated by the forward pass.
      center_grads: gradients for `centers` (required iff centres are on).

    Returns:
      The new state, `step + 1`.
    """
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    centers, center_opt_state = self.centers, self.center_opt_state
    if self.centers is not None:
      if center_grads is None:
        raise ValueError("the state has centre-loss centres but no center_grads were given")
      c_updates, center_opt_state = self.center_tx.update(center_grads, center_opt_state)
      centers = optax.apply_updates(centers, c_updates)
    return self.replace(
      step=self.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      centers=centers,
      center_opt_state=center_opt_state,
    )


def _resolve_steps_per_epoch(config: ml_collections.ConfigDict, steps_per_epoch: int | None):
  steps = config.train.steps_per_epoch if steps_per_epoch is None else steps_per_epoch
  if steps is None or steps <= 0:
    raise errors.UserError(
      f"steps_per_epoch is {steps}: pass steps_per_epoch= (e.g. num_train_identities "
      "// config.input.num_identities) or set config.train.steps_per_epoch > 0"
    )
  return int(steps)


def check_initialisation(init_config: ml_collections.ConfigDict) -> None:
  """Refuses a run that would silently start from random weights.

  Args:
    init_config: `config.init`. `pretrained` must name a converted file, or be
      'scratch' to train from random initialisation on purpose (the tiny and demo
      configs do).

  Raises:
    pretrained.MissingPretrainedError: `pretrained` is empty; the message says where the
      ImageNet weights come from and how to convert them.
  """
  if not init_config.pretrained:
    raise pretrained_lib.MissingPretrainedError(
      "config.init.pretrained is empty: this run would train from random weights, tens of "
      "points below any published ReID figure (every recipe starts from ImageNet)",
      hint=f"get the official IBN-Net release {pretrained_lib.IBN_A_RELEASE} (XingangPan/"
      "IBN-Net on GitHub), convert it once with `python -m fsaf_jax.convert_ibn "
      f"{pretrained_lib.IBN_A_RELEASE} r50_ibn_a.msgpack` and pass "
      "--config.init.pretrained=r50_ibn_a.msgpack; to train from scratch on purpose, pass "
      f"--config.init.pretrained={pretrained_lib.SCRATCH}",
    )


def init_variables(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  rng: jax.Array,
  image_size: tuple[int, int],
  mesh: Mesh,
) -> tuple[PyTree, pretrained_lib.PretrainedReport | None]:
  """The model's initial variables, replicated over `mesh`, with pretrained weights.

  Args:
    config: the run config (`init`).
    model: the FSAF module.
    rng: PRNG key, the same on every process (the `rng` of `create_train_state`: the
      model is initialised from its first split).
    image_size: (H, W) of the training images.
    mesh: the device mesh.

  Returns:
    ({'params', 'batch_stats'}, report): the report of `pretrained.apply_pretrained`
    (what was loaded, dropped and left at init), or None without a pretrained file.
    With `config.init.zero_init_attention_bn`, the last BatchNorm scale of every MHSA
    block is then set to 0 (`bottleneck.zero_attention_last_bn`).
  """
  h, w = image_size
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  model_rng = jax.random.split(rng)[0]
  init = jax.jit(lambda r: model.init(r, dummy, train=False), out_shardings=replicated(mesh))
  variables = init(model_rng)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  report = None
  path = pretrained_lib.pretrained_file(config.init.pretrained)
  if path:
    variables, report = pretrained_lib.apply_pretrained(variables, path)
    logging.info("Pretrained weights from %s:\n%s", path, report)
  if config.init.zero_init_attention_bn:
    variables = jax.jit(
      lambda v: {**v, "params": zero_attention_last_bn(v["params"])},
      out_shardings=replicated(mesh),
    )(variables)
  return variables, report


def create_train_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  rng: jax.Array,
  num_classes: int,
  image_size: tuple[int, int],
  *,
  steps_per_epoch: int | None = None,
  mesh: Mesh | None = None,
  variables: PyTree | None = None,
) -> TrainState:
  """Initialises the model, optional pretrained backbone, optimiser and centres.

  Args:
    config: full run config (`configs/base.py`): uses `init`, `loss.center_weight`,
      `optim`, `train.steps_per_epoch`.
    model: the FSAF module (`fsaf_jax.models.registry.create_model`).
    rng: PRNG key; the same on every process (the state must be identical).
    num_classes: training identities (rows of the centres).
    image_size: (H, W) of the training images.
    steps_per_epoch: optimiser steps per epoch for the lr schedule; default
      `config.train.steps_per_epoch`, which must then be positive.
    mesh: the device mesh the state is replicated over; default `make_mesh()`.
    variables: the initial {'params', 'batch_stats'} (`init_variables`), replicated
      over `mesh`; default `init_variables(config, model, rng, image_size, mesh)`.

  Returns:
    A `TrainState` at step 0 whose arrays are replicated over `mesh`.
  """
  mesh = make_mesh() if mesh is None else mesh
  steps_per_epoch = _resolve_steps_per_epoch(config, steps_per_epoch)
  repl = replicated(mesh)
  centers_rng = jax.random.split(rng)[1]
  if variables is None:
    variables, _ = init_variables(config, model, rng, image_size, mesh)

  tx, lr_schedule = create_optimizer(config.optim, steps_per_epoch, variables["params"])
  use_centers = bool(config.loss.center_weight)
  center_tx = optax.sgd(config.optim.center_lr) if use_centers else None
  if use_centers:
    dummy = jnp.zeros((1, *image_size, 3), jnp.float32)
    feat = jax.eval_shape(lambda v: model.apply(v, dummy, train=False), variables)["feat"]
    feature_dim = feat.shape[-1]

  def init_state(variables, centers_rng):
    centers = init_centers(centers_rng, num_classes, feature_dim) if use_centers else None
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(variables["params"]),
      centers=centers,
      center_opt_state=center_tx.init(centers) if use_centers else None,
      tx=tx,
      center_tx=center_tx,
      lr_schedule=lr_schedule,
    )

  return jax.jit(init_state, out_shardings=repl)(variables, centers_rng)
