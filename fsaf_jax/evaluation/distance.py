"""Query-gallery distance matrices.

Two metrics, as in fast-reid / torchreid:

- 'cosine': `1 - <q / |q|, g / |g|>` (features L2-normalised with eps 1e-12 as
  `torch.nn.functional.normalize`); values in [0, 2].
- 'euclidean': the *squared* Euclidean distance `|q|^2 + |g|^2 - 2 <q, g>`, as
  torchreid's `euclidean_squared_distance` computes it, clamped at 0 (rounding can
  make the expanded form slightly negative). Squaring is monotone, so the ranking (and
  every metric computed from it) is that of the Euclidean distance itself; re-ranking
  normalises each row by its maximum, so it also sees the squared distance, as in
  Zhong et al.'s reference code.

Matrix products run at `Precision.HIGHEST` (full float32 also on TPU/GPU, where the
default would use bfloat16 passes), so the ranking does not depend on the platform.

`prepare` / `distance_from_prepared` split the work so that chunked callers
(`metrics.evaluate_features`) normalise the gallery once and compute exactly the same
numbers as `pairwise_distance`. `prepare` is compiled on its own on purpose: fused
into the product (one jit), XLA:CPU's YNN dot fusion made the Market-scale cosine
matrix many times slower than the plain product (docs/performance.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fsaf_jax.evaluation import inputs

METRICS = ("cosine", "euclidean")
_L2_EPS = 1e-12  # as torch.nn.functional.normalize


class Prepared(NamedTuple):
  """Features ready for `distance_from_prepared`.

  Attributes:
    feats: [n, D] float32: L2-normalised for 'cosine', as given for 'euclidean'.
    sq_norms: [n] squared norms (used by 'euclidean'; zeros for 'cosine').
  """

  feats: jax.Array
  sq_norms: jax.Array


def check_metric(metric: str) -> str:
  if metric not in METRICS:
    raise inputs.EvaluationInputError(f"Unknown metric {metric!r}: expected one of {METRICS}.")
  return metric


@functools.partial(jax.jit, static_argnames="metric")
def prepare(feats: jax.Array, metric: str) -> Prepared:
  """Per-row preprocessing of features [n, D] for `metric` (see the module doc)."""
  feats = jnp.asarray(feats, jnp.float32)
  sq = jnp.sum(feats * feats, axis=1)
  if metric == "cosine":
    norms = jnp.maximum(jnp.sqrt(sq), _L2_EPS)
    return Prepared(feats / norms[:, None], jnp.zeros_like(sq))
  return Prepared(feats, sq)


def distance_from_prepared(q: Prepared, g: Prepared, metric: str) -> jax.Array:
  """Distances [m, n] between prepared queries [m, D] and gallery [n, D] (traceable)."""
  dots = jnp.matmul(q.feats, g.feats.T, precision=jax.lax.Precision.HIGHEST)
  if metric == "cosine":
    return 1.0 - dots
  return jnp.maximum(q.sq_norms[:, None] + g.sq_norms[None, :] - 2.0 * dots, 0.0)


@functools.partial(jax.jit, static_argnames="metric")
def _from_prepared(q: Prepared, g: Prepared, metric: str) -> jax.Array:
  return distance_from_prepared(q, g, metric)


def pairwise_distance(q, g, metric: str = "cosine") -> jax.Array:
  """Distance matrix between query and gallery features (jitted).

  Args:
    q: query features [M, D].
    g: gallery features [N, D].
    metric: 'cosine' or 'euclidean' (squared; see the module doc).

  Returns:
    float32 jax.Array [M, N]; entry (i, j) is the distance of query i to gallery item j.
  """
  check_metric(metric)
  q, g = jnp.asarray(q), jnp.asarray(g)
  if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
    raise inputs.EvaluationInputError(
      f"Features must be [M, D] and [N, D] with the same D, got {q.shape} and {g.shape}."
    )
  return _from_prepared(prepare(q, metric), prepare(g, metric), metric)
