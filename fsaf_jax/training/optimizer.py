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

Schedule, per optimiser step (decision). BoT's original `WarmupMultiStepLR` is stepped
once per epoch; fast-reid's is stepped per iteration during warmup. We warm up per
*step*: with `s` the step and `e = s / steps_per_epoch` the fractional epoch,

  lr(s) = base_lr * warmup(e) * gamma ** #{m in milestones : e >= m}
  warmup(e) = warmup_factor + (1 - warmup_factor) * e / warmup_epochs  (e < warmup_epochs)
            = 1                                                        (otherwise)

so at the first step of every epoch the lr equals BoT's per-epoch value exactly, and
within a warmup epoch it rises linearly instead of staying flat. The decays happen at
epoch boundaries (step `m * steps_per_epoch`), as in both recipes. Both factors are
optax schedules (`linear_schedule`, `piecewise_constant_schedule`); their product, like
BoT's, also covers milestones inside the warmup.
"""

import flax.traverse_util
import jax
import ml_collections
import optax

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


def _check_schedule_config(optim_config, steps_per_epoch: int) -> tuple[int, ...]:
  if not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0:
    raise ValueError(
      f"steps_per_epoch must be a positive int, got {steps_per_epoch!r} (resolve "
      "config.train.steps_per_epoch=-1 from the dataset before building the optimiser)"
    )
  milestones = tuple(int(m) for m in optim_config.milestones)
  if any(m <= 0 for m in milestones) or list(milestones) != sorted(set(milestones)):
    raise ValueError(
      f"config.optim.milestones must be strictly increasing positive epochs, got "
      f"{tuple(optim_config.milestones)}"
    )
  if optim_config.warmup_epochs < 0:
    raise ValueError(f"config.optim.warmup_epochs must be >= 0, got {optim_config.warmup_epochs}")
  if not 0.0 < optim_config.warmup_factor <= 1.0:
    raise ValueError(
      f"config.optim.warmup_factor must be in (0, 1], got {optim_config.warmup_factor}"
    )
  if optim_config.gamma <= 0:
    raise ValueError(f"config.optim.gamma must be > 0, got {optim_config.gamma}")
  if optim_config.base_lr <= 0:
    raise ValueError(f"config.optim.base_lr must be > 0, got {optim_config.base_lr}")
  return milestones


def create_lr_schedule(
  optim_config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.Schedule:
  """The warmup multi-step learning rate, a function of the optimiser step.

  Args:
    optim_config: `config.optim` (`base_lr`, `warmup_epochs`, `warmup_factor`,
      `milestones` (epochs), `gamma`).
    steps_per_epoch: optimiser steps per epoch (> 0).

  Returns:
    `schedule(step) -> lr` (scalar), per step; see the module docstring.
  """
  milestones = _check_schedule_config(optim_config, steps_per_epoch)
  warmup_steps = int(round(optim_config.warmup_epochs * steps_per_epoch))
  if warmup_steps > 0:
    warmup = optax.linear_schedule(optim_config.warmup_factor, 1.0, warmup_steps)
  else:
    warmup = optax.constant_schedule(1.0)
  decay = optax.piecewise_constant_schedule(
    optim_config.base_lr,
    {m * steps_per_epoch: optim_config.gamma for m in milestones},
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
      raise ValueError(f"config.optim.{name} must be >= 0, got {optim_config[name]}")
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
