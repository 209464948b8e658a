"""The train state: step, model and loss parameters, BatchNorm statistics, optimiser state.

A `flax.struct` dataclass, so it is a pytree: jit, sharding and orbax checkpointing see
the arrays (`step`, `params`, `batch_stats`, `loss_params`, `opt_state`); the optimiser
and the lr schedule are static fields. The trained parameters are
`{'model': params, 'loss': loss_params}` (`TrainState.trainable`): the model's, and
those of the loss terms that have some (the centre loss's centres,
`loss_params['center']`), trained by one optimiser that partitions them
(`optimizer.partition_optimizer`): the BoT Adam recipe on the model, each loss term's
own optimiser on its parameters (the centres: SGD on the unweighted centre loss).

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
from fsaf_jax.losses.reid_loss import init_loss_params, loss_optimizers
from fsaf_jax.models import pretrained as pretrained_lib
from fsaf_jax.models.bottleneck import zero_attention_last_bn
from fsaf_jax.training.optimizer import create_optimizer, partition_optimizer

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, optimiser steps taken.
    params: model parameters (`variables['params']`).
    batch_stats: BatchNorm running statistics (`variables['batch_stats']`).
    loss_params: `{term name: parameters}` of the loss terms that have some
      (`{'center': [num_classes, C] float32}` with the centre loss on; else empty).
    opt_state: state of `tx`.
    tx: the optimiser of `trainable` (static).
    lr_schedule: `step -> lr` of the model's optimiser (static; for logging).
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  loss_params: dict[str, PyTree]
  opt_state: optax.OptState
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  lr_schedule: Callable[[jax.Array], jax.Array] = flax.struct.field(pytree_node=False)

  @property
  def variables(self) -> dict[str, PyTree]:
    """`{'params', 'batch_stats'}`, what `model.apply` takes (the model's only)."""
    return {"params": self.params, "batch_stats": self.batch_stats}

  @property
  def trainable(self) -> dict[str, PyTree]:
    """`{'model': params, 'loss': loss_params}`: what `tx` trains."""
    return {"model": self.params, "loss": self.loss_params}

  def apply_gradients(self, grads: PyTree, batch_stats: PyTree) -> TrainState:
    """One optimiser step.

    Args:
      grads: gradients of the loss w.r.t. `trainable` (same tree).
      batch_stats: the BatchNorm statistics updated by the forward pass.

    Returns:
      The new state, `step + 1`.
    """
    updates, opt_state = self.tx.update(grads, self.opt_state, self.trainable)
    trainable = optax.apply_updates(self.trainable, updates)
    return self.replace(
      step=self.step + 1,
      params=trainable["model"],
      batch_stats=batch_stats,
      loss_params=trainable["loss"],
      opt_state=opt_state,
    )


def create_tx(
  config: ml_collections.ConfigDict, steps_per_epoch: int, params: PyTree
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimiser of `TrainState.trainable` and the model's lr schedule.

  Args:
    config: the run config (`optim`, `loss`).
    steps_per_epoch: optimiser steps per epoch (> 0).
    params: the model parameters (their names pick the weight-decay groups).

  Returns:
    `(tx, schedule)`: the BoT Adam recipe on 'model' and each loss term's optimiser on
    'loss'/<term>.
  """
  model_tx, schedule = create_optimizer(config.optim, steps_per_epoch, params)
  loss_tx = partition_optimizer(loss_optimizers(config.loss))
  return partition_optimizer({"model": model_tx, "loss": loss_tx}), schedule


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
      hint=f"pass --config.init.pretrained={pretrained_lib.IMAGENET} (the official IBN-Net "
      f"release {pretrained_lib.IBN_A_RELEASE} is downloaded and converted once), or a file "
      "converted with `python -m fsaf_jax.convert_ibn SRC.pth DST`; to train from scratch "
      f"on purpose, pass --config.init.pretrained={pretrained_lib.SCRATCH}",
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
  """Initialises the model, optional pretrained backbone, loss parameters and optimiser.

  Args:
    config: full run config (`configs/base.py`): uses `init`, `loss`, `optim`,
      `train.steps_per_epoch`.
    model: the FSAF module (`fsaf_jax.models.registry.create_model`).
    rng: PRNG key; the same on every process (the state must be identical).
    num_classes: training identities (e.g. rows of the centres).
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
  loss_rng = jax.random.split(rng)[1]
  if variables is None:
    variables, _ = init_variables(config, model, rng, image_size, mesh)

  tx, lr_schedule = create_tx(config, steps_per_epoch, variables["params"])
  dummy = jnp.zeros((1, *image_size, 3), jnp.float32)
  feat = jax.eval_shape(lambda v: model.apply(v, dummy, train=False), variables)["feat"]

  def init_state(variables, loss_rng):
    loss_params = init_loss_params(loss_rng, config.loss, num_classes, feat.shape[-1])
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      loss_params=loss_params,
      opt_state=tx.init({"model": variables["params"], "loss": loss_params}),
      tx=tx,
      lr_schedule=lr_schedule,
    )

  return jax.jit(init_state, out_shardings=repl)(variables, loss_rng)
