"""The ReID training objective: the weighted sum of the registered loss terms.

`total = sum_name config.loss.<name>_weight * term_name(outputs, labels)` over the
terms with a non-zero weight (`fsaf_jax.losses.registry`); the BoT recipe is
`ce_weight * CE(logits, smooth(onehot, eps)) + triplet_weight * triplet(feat)
+ center_weight * center(feat, centers)`, with the weights, smoothing and margin from
`config.loss` (`configs/base.py`). Terms with trained parameters (the centres) get them
from `loss_params`, created by `init_loss_params` and trained by `loss_optimizers`.
"""

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fsaf_jax.losses.registry import active_terms

PyTree = Any


def reid_loss(
  outputs: Mapping[str, jax.Array],
  labels: jax.Array,
  loss_config: ml_collections.ConfigDict,
  loss_params: Mapping[str, PyTree] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the ReID losses.

  Args:
    outputs: model outputs (the terms read theirs: `'logits'` [B, num_classes], `'feat'`
      [B, C] pre-BNNeck).
    labels: int [B] training identities.
    loss_config: `config.loss`: the `<name>_weight`s and the terms' fields
      (`label_smoothing`, `triplet_margin` (None = soft margin), ...).
    loss_params: `{name: parameters}` of the active terms that have some (the centres,
      [num_classes, C], under 'center'); `init_loss_params` makes them.

  Returns:
    `(total, parts)`: scalar float32 total, and a dict of the *unweighted* parts by
    term name (`'ce'`, `'triplet'`, `'center'`), scalars. Losses with weight 0 are not
    computed and not reported.
  """
  loss_params = {} if loss_params is None else loss_params
  parts = {}
  total = jnp.zeros((), jnp.float32)
  for term, weight in active_terms(loss_config):
    if term.init is None:
      parts[term.name] = term.fn(outputs, labels, loss_config)
    elif term.name not in loss_params:
      raise ValueError(
        f"config.loss.{term.name}_weight={weight} but no parameters of the "
        f"{term.name!r} loss were given (create the train state with the same loss config)"
      )
    else:
      parts[term.name] = term.fn(outputs, labels, loss_config, loss_params[term.name])
    total += weight * parts[term.name]
  return total, parts


def init_loss_params(
  rng: jax.Array, loss_config: ml_collections.ConfigDict, num_classes: int, feature_dim: int
) -> dict[str, PyTree]:
  """Initial parameters of the active terms that have some.

  Args:
    rng: PRNG key (the i-th such term, by name, gets `fold_in(rng, i)`).
    loss_config: `config.loss`.
    num_classes: training identities.
    feature_dim: C of the model's 'feat' output.

  Returns:
    `{name: parameters}` (empty when no active term has parameters).
  """
  terms = [term for term, _ in active_terms(loss_config) if term.init is not None]
  return {
    term.name: term.init(jax.random.fold_in(rng, i), num_classes, feature_dim, loss_config)
    for i, term in enumerate(terms)
  }


def loss_optimizers(
  loss_config: ml_collections.ConfigDict,
) -> dict[str, optax.GradientTransformation]:
  """`{name: optimiser}` of the active terms with parameters (`config.loss`)."""
  return {
    term.name: term.optimizer(loss_config)
    for term, _ in active_terms(loss_config)
    if term.init is not None
  }
