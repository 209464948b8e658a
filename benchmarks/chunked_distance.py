"""Distance matrices too large for the device, computed block by block into host memory.

Only the benchmarks need these (`benchmarks/evaluation.py` builds the Market-scale
re-ranking inputs with it); the package's own scoring never materialises the full
matrix on the host (`fsaf_jax.evaluation.metrics.evaluate_features`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from fsaf_jax.evaluation import distance, inputs


@functools.partial(jax.jit, static_argnames="metric")
def _block(q: distance.Prepared, g: distance.Prepared, metric: str) -> jax.Array:
  return distance.distance_from_prepared(q, g, metric)


def pairwise_distance_chunked(
  q, g, metric: str = "cosine", *, query_chunk: int = 1024
) -> np.ndarray:
  """`distance.pairwise_distance` computed `query_chunk` query rows at a time, on the host.

  The device holds the prepared gallery and one [query_chunk, N] block; the last
  chunk is padded so one compiled shape serves every chunk. The values are those of
  `pairwise_distance` (same per-row preprocessing and product).

  Args:
    q: query features [M, D].
    g: gallery features [N, D].
    metric: 'cosine' or 'euclidean'.
    query_chunk: query rows per block.

  Returns:
    float32 np.ndarray [M, N].
  """
  distance.check_metric(metric)
  q = np.asarray(q, np.float32)
  if q.ndim != 2 or np.ndim(g) != 2 or q.shape[1] != np.shape(g)[1]:
    raise inputs.EvaluationInputError(
      f"Features must be [M, D] and [N, D] with the same D, got {q.shape} and {np.shape(g)}."
    )
  g_prep = distance.prepare(jnp.asarray(g, jnp.float32), metric)
  m = q.shape[0]
  chunk = max(1, min(int(query_chunk), m))
  out = np.empty((m, g_prep.feats.shape[0]), np.float32)
  pending = []
  for start in range(0, m, chunk):
    rows = q[start : start + chunk]
    n = rows.shape[0]
    if n < chunk:
      rows = np.concatenate([rows, np.zeros((chunk - n, q.shape[1]), np.float32)])
    pending.append((start, n, _block(distance.prepare(rows, metric), g_prep, metric)))
    if len(pending) > 1:  # keep one block in flight while copying the previous one
      s, k, block = pending.pop(0)
      out[s : s + k] = np.asarray(block)[:k]
  for s, k, block in pending:
    out[s : s + k] = np.asarray(block)[:k]
  return out
