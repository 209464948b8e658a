"""Loss terms by name: the training objective is the sum of the terms whose weight
`config.loss.<name>_weight` is non-zero.

A term is registered with `@register_loss('<name>')` on its function
`fn(outputs, labels, loss_config) -> scalar` (the unweighted term; `outputs` is the
model's dict). A term with trained parameters of its own (the centre loss's centres)
takes them as a fourth argument, `fn(outputs, labels, loss_config, params)`, and also
gives `init(rng, num_classes, feature_dim, loss_config) -> pytree` and
`optimizer(loss_config) -> optax.GradientTransformation` (the train state trains them
beside the model's parameters, `fsaf_jax.training.train_state`). A term may give
`check(loss_config)`, raising `errors.UserError` for a bad value of its fields:
`check_loss_config` runs the active terms' checks before any data work. A term reads
`config.loss` only.

Every module of the package `fsaf_jax.losses` is imported on the first look-up, so
adding a loss is one new file in `fsaf_jax/losses/` (its registered function) plus a
config that sets `config.loss.<name>_weight` (and whatever fields the term reads).
"""

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import ml_collections

import fsaf_jax.losses
from data_pipelines import errors

WEIGHT_SUFFIX = "_weight"


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """One registered term (see the module docstring for the signatures).

  Attributes:
    name: the registry name; its weight is `config.loss.<name>_weight`.
    fn: the unweighted term.
    init: initial trained parameters of the term, or None (no parameters).
    optimizer: the optimiser of those parameters from `config.loss` (needed iff
      `init` is given).
    check: raises errors.UserError for a bad value of the term's fields of
      `config.loss`, or None (nothing to check).
  """

  name: str
  fn: Callable[..., Any]
  init: Callable[..., Any] | None = None
  optimizer: Callable[[ml_collections.ConfigDict], Any] | None = None
  check: Callable[[ml_collections.ConfigDict], None] | None = None


_LOSSES: dict[str, LossTerm] = {}
_plugins_loaded = False


def register_loss(
  name: str,
  *,
  init: Callable[..., Any] | None = None,
  optimizer: Callable[[ml_collections.ConfigDict], Any] | None = None,
  check: Callable[[ml_collections.ConfigDict], None] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
  """Decorator registering `fn` as the loss term `name` (returns `fn` unchanged).

  Raises:
    ValueError: `name` is taken by another function, or `init` without `optimizer`.
  """
  if (init is None) != (optimizer is None):
    raise ValueError(f"loss {name!r}: a term with parameters needs both init and optimizer")

  def register(fn: Callable[..., Any]) -> Callable[..., Any]:
    if name in _LOSSES and _LOSSES[name].fn is not fn:
      raise ValueError(f"a loss named {name!r} is already registered")
    _LOSSES[name] = LossTerm(name, fn, init, optimizer, check)
    return fn

  return register


def _load_plugins() -> None:
  """Imports every module of `fsaf_jax.losses` once (they register their terms)."""
  global _plugins_loaded
  if not _plugins_loaded:
    for module in pkgutil.iter_modules(fsaf_jax.losses.__path__):
      importlib.import_module(f"{fsaf_jax.losses.__name__}.{module.name}")
    _plugins_loaded = True


def loss_names() -> tuple[str, ...]:
  """The registered loss names, sorted."""
  _load_plugins()
  return tuple(sorted(_LOSSES))


def active_terms(loss_config: ml_collections.ConfigDict) -> list[tuple[LossTerm, float]]:
  """The terms with a non-zero `config.loss.<name>_weight`, with their weights.

  Order (that of the sum): terms without parameters, then terms with parameters, each
  by name (BoT's CE + triplet + centre).

  Raises:
    ValueError: a `<name>_weight` field names no registered loss.
  """
  _load_plugins()
  terms = []
  for key in loss_config.keys():
    if not key.endswith(WEIGHT_SUFFIX) or not loss_config[key]:
      continue
    name = key.removesuffix(WEIGHT_SUFFIX)
    if name not in _LOSSES:
      raise ValueError(
        f"config.loss.{key}={loss_config[key]}: there is no loss {name!r}; registered: "
        f"{loss_names()}"
      )
    terms.append((_LOSSES[name], float(loss_config[key])))
  return sorted(terms, key=lambda t: (t[0].init is not None, t[0].name))


def check_loss_config(loss_config: ml_collections.ConfigDict) -> None:
  """Checks `config.loss` before any data work: every `<name>_weight` names a registered
  term and is not negative, and each active term's `check` accepts its fields.

  Raises:
    errors.UserError: naming the field and its value.
  """
  for key in loss_config.keys():
    if key.endswith(WEIGHT_SUFFIX) and float(loss_config[key]) < 0:
      raise errors.UserError(f"config.loss.{key}={loss_config[key]}: must be >= 0 (0: off)")
  try:
    terms = active_terms(loss_config)
  except ValueError as e:
    raise errors.UserError(str(e)) from None
  for term, _ in terms:
    if term.check is not None:
      term.check(loss_config)
