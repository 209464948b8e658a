"""The BoT optimiser: Adam with coupled (L2) weight decay and a warmup multi-step lr.

Optimiser. PyTorch's `Adam(weight_decay=wd)`, which BoT and fast-reid use, adds
`wd * w` to the gradient *before* the moment estimates (L2 regularisation, not AdamW's
decoupled decay). In optax that is

  chain(add_decayed_weights(wd, mask), scale_by_adam(b1, b2, eps),
        scale_by_learning_rate(schedule))

with one `add_decayed_weights` per parameter group: `config.optim.weight_decay` for
weights (conv / dense kernels, attention position tables, ...),
`weight_decay_bias` for biases outside norm layers, and `weight_decay_norm` for the
scales and shifts of BatchNorm / InstanceNorm / LayerNorm (fast-reid's
`WEIGHT_DECAY_NORM`). A norm layer is recognised as a module holding a `scale`
parameter (Flax's norm layers all name it so); its `bias` is a norm parameter too. The
BNNeck shift is not a parameter at all (`use_bias=False`), so it stays at 0.

Schedules (`config.optim.lr_schedule`), as functions of the optimiser step `s`, with
`spe` the steps per epoch and `e = s // spe` the 0-based epoch:

* `'bot'` (default): reid-strong-baseline's `WarmupMultiStepLR`, which its trainer
  steps once per epoch *at the epoch start*, so epoch `e` runs with `last_epoch = e + 1`:

    lr(s) = base_lr * warmup(e + 1) * gamma ** #{m in milestones : m <= e + 1}
    warmup(t) = warmup_factor * (1 - t / warmup_epochs) + t / warmup_epochs  (t < warmup_epochs)
              = 1                                                           (otherwise)

  A staircase: constant within an epoch. With the recipe's values (3.5e-4, 10 warmup
  epochs from 0.01, milestones 40 and 70) epoch 0 runs at 3.815e-5, the full lr is
  reached at epoch 9 and the decays act from epochs 39 and 69 (0-based).
* `'fastreid'`: fast-reid's `WarmupLR` stepped after every iteration for
  `warmup_iters` iterations (linear from `warmup_factor`), and `MultiStepLR` stepped
  at the end of every epoch that ends after the warmup (fast-reid's LRScheduler hook):

    lr(s) = base_lr * warmup(s) * gamma ** #{m in milestones : m <= n(e)}
    warmup(s) = warmup_factor * (1 - s / warmup_iters) + s / warmup_iters  (s < warmup_iters)
    n(e) = max(0, e - floor(warmup_iters / spe))   (multi-step updates before epoch e)

  so with fast-reid's BoT values (2,000 warmup iterations, milestones 40 and 90,
  202 iterations per epoch) the decays act from epochs 49 and 99.

Both are built from optax schedules (`piecewise_constant_schedule`, `linear_schedule`).

The train state trains the model's parameters and the loss terms' (the centres) with one
transformation, `partition_optimizer`: this recipe on the model's subtree, each loss
term's own optimiser on its parameters.
"""

from collections.abc import Mapping

import flax.traverse_util
import jax
import ml_collections
import optax

from fsaf_jax.core import errors

PARAM_GROUPS = ("weight", "bias", "norm")


def param_groups(params) -> dict:
  """Labels every parameter 'weight', 'bias' or 'norm' (see the module docstring).

  Args:
    params: a nested dict of parameters (Flax `variables['params']`).

  Returns:
    A nested dict of the same structure whose leaves are the group labels.
  """
  flat = flax.traverse_util.flatten_dict(params)
  labels = {}
  for path, _ in flat.items():
    name, parent = path[-1], path[:-1]
    if name == "scale" or (name == "bias" and parent + ("scale",) in flat):
      labels[path] = "norm"
    elif name == "bias":
      labels[path] = "bias"
    else:
      labels[path] = "weight"
  return flax.traverse_util.unflatten_dict(labels)


LR_SCHEDULES = ("bot", "fastreid")


def _check_schedule_config(optim_config, steps_per_epoch: int) -> tuple[int, ...]:
  if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
    raise errors.UserError(
      f"steps_per_epoch must be a positive int, got {steps_per_epoch!r} (resolve "
      "config.train.steps_per_epoch=-1 from the dataset before building the optimiser)"
    )
  if optim_config.lr_schedule not in LR_SCHEDULES:
    raise errors.UserError(
      f"config.optim.lr_schedule={optim_config.lr_schedule!r}: must be one of {LR_SCHEDULES}"
    )
  milestones = tuple(int(m) for m in optim_config.milestones)
  if any(m <= 0 for m in milestones) or list(milestones) != sorted(set(milestones)):
    raise errors.UserError(
      f"config.optim.milestones must be strictly increasing positive epochs, got "
      f"{tuple(optim_config.milestones)}"
    )
  if optim_config.warmup_epochs < 0 or optim_config.warmup_iters < 0:
    raise errors.UserError(
      f"config.optim.warmup_epochs ({optim_config.warmup_epochs}) and warmup_iters "
      f"({optim_config.warmup_iters}) must be >= 0"
    )
  # Each schedule warms up in its own unit; a value in the other one would be ignored.
  unused = "warmup_iters" if optim_config.lr_schedule == "bot" else "warmup_epochs"
  if optim_config[unused]:
    raise errors.UserError(
      f"config.optim.{unused}={optim_config[unused]} has no effect with "
      f"config.optim.lr_schedule={optim_config.lr_schedule!r} (the 'bot' schedule warms up "
      "per epoch over warmup_epochs, 'fastreid' per step over warmup_iters): set it to 0"
    )
  if not 0.0 < optim_config.warmup_factor <= 1.0:
    raise errors.UserError(
      f"config.optim.warmup_factor must be in (0, 1], got {optim_config.warmup_factor}"
    )
  if optim_config.gamma <= 0:
    raise errors.UserError(f"config.optim.gamma must be > 0, got {optim_config.gamma}")
  if optim_config.base_lr <= 0:
    raise errors.UserError(f"config.optim.base_lr must be > 0, got {optim_config.base_lr}")
  return milestones


def bot_epoch_factors(optim_config: ml_collections.ConfigDict) -> list[float]:
  """The 'bot' schedule's lr factor (times base_lr) of 0-based epochs 0, 1, ..., E.

  E is the last epoch at which the factor changes; later epochs keep the last value.
  """
  milestones = tuple(int(m) for m in optim_config.milestones)
  warmup, factor0 = optim_config.warmup_epochs, optim_config.warmup_factor
  factors = []
  for epoch in range(max((warmup, *milestones), default=0) + 1):
    last_epoch = epoch + 1  # BoT steps its scheduler at the start of every epoch
    alpha = last_epoch / warmup if last_epoch < warmup else 1.0
    warm = factor0 * (1 - alpha) + alpha
    factors.append(warm * optim_config.gamma ** sum(m <= last_epoch for m in milestones))
  return factors


def create_lr_schedule(
  optim_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """The learning rate as a function of the optimiser step (see the module docstring).

  Args:
    optim_config: `config.optim` (`lr_schedule`, `base_lr`, `warmup_epochs` or
      `warmup_iters`, `warmup_factor`, `milestones` (epochs), `gamma`).
    steps_per_epoch: optimiser steps per epoch (> 0).

  Returns:
    `schedule(step) -> lr` (scalar).
  """
  milestones = _check_schedule_config(optim_config, steps_per_epoch)
  base_lr = optim_config.base_lr
  if optim_config.lr_schedule == "bot":
    factors = bot_epoch_factors(optim_config)
    boundaries = {
      epoch * steps_per_epoch: factors[epoch] / factors[epoch - 1]
      for epoch in range(1, len(factors))
      if factors[epoch] != factors[epoch - 1]
    }
    return optax.piecewise_constant_schedule(base_lr * factors[0], boundaries)

  warmup_iters = int(optim_config.warmup_iters)
  if warmup_iters > 0:
    warmup = optax.linear_schedule(optim_config.warmup_factor, 1.0, warmup_iters)
  else:
    warmup = optax.constant_schedule(1.0)
  first_decay_epoch = warmup_iters // steps_per_epoch  # epochs before n(e) starts counting
  decay = optax.piecewise_constant_schedule(
    base_lr,
    {(first_decay_epoch + m) * steps_per_epoch: optim_config.gamma for m in milestones},
  )
  return lambda step: warmup(step) * decay(step)


def coupled_weight_decay(labels, decays: dict[str, float]) -> optax.GradientTransformation:
  """Adds `decays[group] * w` to the gradient of every parameter of each group.

  Args:
    labels: the group label of every parameter (`param_groups(params)`).
    decays: weight decay per group label (zero entries add nothing).

  Returns:
    An optax transformation (needs `params` in `update`).
  """
  steps = []
  for group, wd in decays.items():
    if group not in PARAM_GROUPS:
      raise ValueError(f"unknown parameter group {group!r}; expected one of {PARAM_GROUPS}")
    if wd:
      mask = jax.tree.map(lambda label, g=group: label == g, labels)
      steps.append(optax.add_decayed_weights(wd, mask))
  return optax.chain(*steps) if steps else optax.identity()


def create_optimizer(
  optim_config: ml_collections.ConfigDict,
  steps_per_epoch: int,
  params,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Adam with coupled weight decay per parameter group and the warmup multi-step lr.

  Args:
    optim_config: `config.optim` (see `configs/base.py`).
    steps_per_epoch: optimiser steps per epoch (> 0).
    params: the model parameters (only their tree structure and names are used, to
      build the weight-decay masks); arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    `(tx, schedule)`: the optax transformation (call `tx.update(grads, state, params)`)
    and the learning-rate schedule it uses (for logging).
  """
  for name in ("weight_decay", "weight_decay_bias", "weight_decay_norm"):
    if optim_config[name] < 0:
      raise errors.UserError(f"config.optim.{name} must be >= 0, got {optim_config[name]}")
  schedule = create_lr_schedule(optim_config, steps_per_epoch)
  tx = optax.chain(
    coupled_weight_decay(
      param_groups(params),
      {
        "weight": optim_config.weight_decay,
        "bias": optim_config.weight_decay_bias,
        "norm": optim_config.weight_decay_norm,
      },
    ),
    optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps),
    optax.scale_by_learning_rate(schedule),
  )
  return tx, schedule


def partition_optimizer(
  transforms: Mapping[str, optax.GradientTransformation],
) -> optax.GradientTransformation:
  """Applies `transforms[key]` to the subtree `key` of a dict of parameters.

  Each transformation sees its own subtree only (its state, updates and params), as if
  it trained that subtree alone; the train state uses it for `{'model': <model params>,
  'loss': {<term>: <params>}}` with the Adam recipe on 'model' and, on 'loss', another
  partition with each loss term's optimiser (the centres' SGD).

  Args:
    transforms: `{key: transformation}`; the parameters' keys must be these.

  Returns:
    An optax transformation whose state is `{key: state of transforms[key]}`.
  """

  def init(params):
    _check_keys(params)
    return {key: tx.init(params[key]) for key, tx in transforms.items()}

  def update(updates, state, params=None):
    _check_keys(updates)
    new_updates, new_state = {}, {}
    for key, tx in transforms.items():
      sub_params = None if params is None else params[key]
      new_updates[key], new_state[key] = tx.update(updates[key], state[key], sub_params)
    return new_updates, new_state

  def _check_keys(tree):
    if set(tree) != set(transforms):
      raise ValueError(
        f"parameters with keys {sorted(tree)}; the optimiser has {sorted(transforms)}"
      )

  return optax.GradientTransformation(init, update)
