"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), vectorised in JAX, chunked, with a sparse V.

Computes exactly what the well-known per-row NumPy formulation computes (torchreid's
and fast-reid's `re_ranking`, reproduced in `tests/reference/rerank_numpy.py`), with
k1 = 20, k2 = 6, lambda = 0.3 by default. Conventions, shared with that reference:

- Input convention, `squared`:
  - False (default): the distances are used as given, as BoT's feature-based
    `re_ranking` and the authors' code do. `re_ranking_features` uses
    `distance.pairwise_distance`: the squared Euclidean distance of the authors' code
    for 'euclidean'; for 'cosine' (L2-normalised features) that distance halved,
    which the per-row normalisation cancels. Reproduces BoT's `re_ranking(probFea,
    galFea, ...)` and `tests/reference/rerank_numpy.py` on the same distances.
  - True: the given distances are squared first, as fast-reid's and torchreid's
    `re_ranking(q_g_dist, q_q_dist, g_g_dist)` do with whatever they are given.
    Reproduces them when given the same distance blocks (e.g. fast-reid's cosine
    distance: `re_ranking_features(..., metric='cosine', squared=True)`).
  Same features, different re-ranked figures: the two differ by more than rounding.
- The all-pairs matrix D = [[q_q, q_g], [q_g^T, g_g]] (A = Q + G images) is divided
  by its column maxima and transposed; the initial ranking is a *stable* sort of its
  rows (ties broken by index); all arithmetic is float32 (the original keeps V and
  the Jaccard distance in float16).

How the memory stays small (the dense formulation holds several [A, A] float32 arrays,
A = Q + G; this needs the three input blocks on the device plus O(A * k) and O(Q * G);
measured peaks of both in docs/performance.md, from `benchmarks/evaluation.py`):

1. Row blocks of D^T are sliced (and transposed, unless `symmetric`) on the device;
   each is divided by its maximum and its top-(k1 + 1) neighbours taken with
   `lax.top_k` (stable: lower index first; -0.0 is mapped to 0.0 first, as argsort
   treats them equal).
2. k-reciprocal sets, the 2/3-overlap expansion over the k1/2 sets, and the
   de-duplicated expansion set of every image are computed from the neighbour table
   alone: each expansion set lies within the (k1 + 1) * (1 + k1/2 + 1) candidates of
   its row, so V is stored sparse (sorted indices [A, W] and weights).
3. The weights `exp(-d)` are gathered from the blocks at those indices only.
4. Local query expansion (mean of the V rows of the k2 nearest neighbours) merges the
   sparse rows by a per-row sort and a segment sum.
5. The Jaccard numerator `sum_j min(V_q[j], V_g[j])` goes through an inverted index
   of the gallery rows (a counting sort; within-column positions from a `lax.scan`):
   each (query entry, gallery entry) pair sharing a column contributes once, summed
   by `segment_sum`, in blocks of query rows with a bounded pair count.

`re_ranking` checks its inputs and runs one function per stage: `_initial_ranking`
(1), `_k_reciprocal_encoding` (2-3), `local_query_expansion` (4) and
`_jaccard_and_blend` (5).
`rerank_sharded.re_ranking_features_sharded` runs the same stages with the images
split over a device mesh; it shares stages 2 and 4 and the per-row kernels of 3 and 5
(`expansion_set_table`, `local_query_expansion`, `weights_from_distances`,
`inverted_index`, `final_rows`, `jaccard_in_blocks`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fsaf_jax.evaluation import distance as distance_lib
from fsaf_jax.evaluation import inputs

DEFAULT_ROW_CHUNK = 1024
DEFAULT_QUERY_ROWS = 1024
_PAIR_BUDGET = 1 << 22  # (query entry, gallery entry) pairs per Jaccard block


def _round_up_pow2(x: int) -> int:
  return 1 << max(int(x) - 1, 0).bit_length()


def _dt_rows(
  q_q: jax.Array,
  q_g: jax.Array,
  g_g: jax.Array,
  start: jax.Array,
  size: int,
  gallery: bool,
  symmetric: bool,
  squared: bool = False,
):
  """Rows of D^T for D = [[q_q, q_g], [q_g^T, g_g]] (traceable).

  Query rows i are [q_q[:, i], q_g[i, :]], gallery rows g are [q_g[:, g], g_g[:, g]].
  With `symmetric`, q_q and g_g are read by rows (q_q[i, :], g_g[g, :]), which is the
  same when they are symmetric and avoids transposing them.

  Args:
    q_q, q_g, g_g: the distance blocks [Q, Q], [Q, G], [G, G].
    start: first row, counted within the query (or gallery) rows.
    size: static number of rows.
    gallery: static, whether the rows are gallery rows.
    symmetric: static, read q_q / g_g by rows.
    squared: static, square the distances (see `re_ranking`).

  Returns:
    float32 [size, Q + G].
  """
  nq, ng = q_g.shape
  if gallery:
    left = jax.lax.dynamic_slice(q_g, (0, start), (nq, size)).T
    if symmetric:
      right = jax.lax.dynamic_slice(g_g, (start, 0), (size, ng))
    else:
      right = jax.lax.dynamic_slice(g_g, (0, start), (ng, size)).T
  else:
    if symmetric:
      left = jax.lax.dynamic_slice(q_q, (start, 0), (size, nq))
    else:
      left = jax.lax.dynamic_slice(q_q, (0, start), (nq, size)).T
    right = jax.lax.dynamic_slice(q_g, (start, 0), (size, ng))
  rows = jnp.concatenate([left, right], axis=1).astype(jnp.float32)
  return rows * rows if squared else rows


@functools.partial(jax.jit, static_argnames=("k", "size", "gallery", "symmetric", "squared"))
def _initial_rank(
  q_q, q_g, g_g, start, k: int, size: int, gallery: bool, symmetric: bool, squared: bool = False
):
  """Stable top-k neighbours of `size` rows of D^T after column-max normalisation.

  Returns:
    neighbours int32 [size, k]; row maxima float32 [size] (D's column maxima); and
    bool [size], whether the row is finite with a positive maximum.
  """
  rows = _dt_rows(q_q, q_g, g_g, start, size, gallery, symmetric, squared)
  row_max = jnp.max(rows, axis=1)
  ok = (row_max > 0) & jnp.all(jnp.isfinite(rows), axis=1)
  neg = -(rows / row_max[:, None])
  neg = jnp.where(neg == 0, 0.0, neg)  # top_k orders -0.0 after 0.0; argsort does not
  return jax.lax.top_k(neg, k)[1].astype(jnp.int32), row_max, ok


def row_starts(num: int, size: int) -> list[int]:
  """Starts of blocks of `size` rows covering 0..num-1; the last one shifted back to fit."""
  return sorted({min(s, num - size) for s in range(0, num, size)})


@jax.jit
def _reciprocal(neighbours: jax.Array) -> jax.Array:
  """[A, k] bool: is row i among the k neighbours of its j-th neighbour."""
  i = jnp.arange(neighbours.shape[0], dtype=jnp.int32)
  return jnp.any(neighbours[neighbours] == i[:, None, None], axis=-1)


@functools.partial(jax.jit, static_argnames=("num_all",))
def _expansion_sets(
  rows: jax.Array,
  rank: jax.Array,
  recip: jax.Array,
  half: jax.Array,
  min_overlap: jax.Array,
  num_all: int,
) -> tuple[jax.Array, jax.Array]:
  """Sorted de-duplicated k-reciprocal expansion sets of `rows`.

  Args:
    rows: int32 [r] image indices.
    rank: int32 [A, K1] stable initial ranking (top k1 + 1).
    recip: bool [A, K1] k-reciprocal flags of `rank`.
    half: bool [A, K1h] k-reciprocal flags of `rank[:, :K1h]` (the k1/2 sets).
    min_overlap: int32 [K1h + 1], smallest overlap n with n > 2/3 * size.
    num_all: A (also the padding index).

  Returns:
    idx: int32 [r, K1 + K1 * K1h] each row's set in increasing order, padded with A.
    count: int32 [r] set sizes.
  """
  k1h = half.shape[1]
  fwd = rank[rows]  # [r, K1]
  fwd_ok = recip[rows]  # the k-reciprocal set R(i)
  cand = rank[fwd, :k1h]  # [r, K1, K1h] the k1/2-neighbours of each candidate
  cand_ok = half[fwd]  # ... and whether they form its k1/2-reciprocal set R(c)
  in_set = jnp.any(
    (cand[..., None] == fwd[:, None, None, :]) & fwd_ok[:, None, None, :], axis=-1
  )  # [r, K1, K1h]: element of R(c) is in R(i)
  overlap = jnp.sum(cand_ok & in_set, axis=-1)
  size = jnp.sum(cand_ok, axis=-1)
  accept = fwd_ok & (overlap >= min_overlap[size])
  sets = jnp.concatenate(
    [
      jnp.where(fwd_ok, fwd, num_all),
      jnp.where(accept[..., None] & cand_ok, cand, num_all).reshape(rows.shape[0], -1),
    ],
    axis=1,
  )
  sets = jnp.sort(sets, axis=1)
  dup = jnp.concatenate([jnp.zeros((sets.shape[0], 1), bool), sets[:, 1:] == sets[:, :-1]], axis=1)
  sets = jnp.sort(jnp.where(dup, num_all, sets), axis=1)
  return sets, jnp.sum(sets < num_all, axis=1, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("symmetric", "squared"))
def _weights(q_q, q_g, g_g, row_max, idx, symmetric: bool, squared: bool = False):
  """Row-normalised V entries exp(-d) at the expansion sets.

  Args:
    q_q, q_g, g_g: the distance blocks.
    row_max: [A] column maxima of D.
    idx: int32 [A, W] expansion sets (padding = A).
    symmetric: read q_q / g_g by rows, as `_dt_rows`.
    squared: square the distances, as `_dt_rows`.

  Returns:
    float32 [A, W]: V[i, idx[i, j]], 0 at padding.
  """
  nq = q_g.shape[0]
  num_all = row_max.shape[0]
  i = jnp.arange(num_all, dtype=jnp.int32)[:, None]
  x = jnp.minimum(idx, num_all - 1)
  # D^T[i, x] = D[x, i], read from the block that holds it.
  qi, qx = jnp.minimum(i, nq - 1), jnp.minimum(x, nq - 1)
  gi, gx = jnp.maximum(i - nq, 0), jnp.maximum(x - nq, 0)
  if symmetric:
    q_q_ix, g_g_ix = q_q[qi, qx], g_g[gi, gx]
  else:
    q_q_ix, g_g_ix = q_q[qx, qi], g_g[gx, gi]
  d = jnp.where(
    x < nq,
    jnp.where(i < nq, q_q_ix, q_g[qx, gi]),
    jnp.where(i < nq, q_g[qi, gx], g_g_ix),
  )
  return weights_from_distances(d, idx, row_max, num_all, squared)


def weights_from_distances(
  d: jax.Array, idx: jax.Array, row_max: jax.Array, num_all: int, squared: bool
) -> jax.Array:
  """Row-normalised V entries exp(-d / row max) (traceable).

  Args:
    d: [r, W] distances D^T[i, idx[i, j]] as given (any value at padding).
    idx: int32 [r, W] expansion sets (padding = `num_all`).
    row_max: float32 [r] the rows' maxima (D's column maxima).
    num_all: A, the padding index.
    squared: square `d` first (see `re_ranking`).

  Returns:
    float32 [r, W], 0 at padding, each row summing to 1.
  """
  d = d.astype(jnp.float32)
  if squared:
    d = d * d
  valid = idx < num_all
  w = jnp.where(valid, jnp.exp(-(d / row_max[:, None])), 0.0)
  total = jnp.sum(w, axis=1, keepdims=True)
  return jnp.where(valid, w / jnp.where(total > 0, total, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames=("num_all",))
def _query_expansion(
  rows: jax.Array, rank_k2: jax.Array, v_idx: jax.Array, v_val: jax.Array, num_all: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Sparse mean of the V rows of each row's k2 nearest neighbours.

  Args:
    rows: int32 [r].
    rank_k2: int32 [A, k2] nearest neighbours (stable order).
    v_idx, v_val: [A, W] sparse V (indices increasing, padding = A, value 0).
    num_all: A.

  Returns:
    idx [r, k2 * W] (increasing, padding A), values [r, k2 * W], count [r].
  """
  r = rows.shape[0]
  k2 = rank_k2.shape[1]
  nb = rank_k2[rows]  # [r, k2]
  idx = v_idx[nb].reshape(r, -1)
  val = v_val[nb].reshape(r, -1)
  width = idx.shape[1]
  idx, val = jax.lax.sort((idx, val), dimension=1, num_keys=1, is_stable=True)
  start = jnp.concatenate([jnp.ones((r, 1), bool), idx[:, 1:] != idx[:, :-1]], axis=1)
  run = jnp.cumsum(start, axis=1) - 1
  seg = (run + width * jnp.arange(r)[:, None]).reshape(-1)
  merged = jax.ops.segment_sum(val.reshape(-1), seg, num_segments=r * width).reshape(r, width)
  row_ids = jnp.broadcast_to(jnp.arange(r)[:, None], (r, width))
  out_idx = jnp.full((r, width), num_all, jnp.int32).at[row_ids, run].set(idx)
  out_val = jnp.where(out_idx < num_all, merged / k2, 0.0)
  return out_idx, out_val, jnp.sum(out_idx < num_all, axis=1, dtype=jnp.int32)


class InvertedIndex(NamedTuple):
  """Column-grouped (CSC) form of the gallery rows of V (`inverted_index`).

  Attributes:
    col_count: int32 [A] entries per column.
    col_start: int32 [A] first slot of each column.
    rows: int32 [nnz] gallery-local row of each slot, grouped by column, in increasing
      row order within a column.
    vals: float32 [nnz] the entries.
  """

  col_count: jax.Array
  col_start: jax.Array
  rows: jax.Array
  vals: jax.Array


@functools.partial(jax.jit, static_argnames=("num_all", "nnz"))
def inverted_index(g_idx: jax.Array, g_val: jax.Array, num_all: int, nnz: int) -> InvertedIndex:
  """Column-grouped (CSC) form of the gallery rows of V.

  Args:
    g_idx, g_val: [G, W] sparse gallery rows (padding index = A).
    num_all: A, the number of columns.
    nnz: number of valid entries.

  Returns:
    `InvertedIndex` with nnz slots.
  """
  valid = g_idx < num_all
  col_count = jax.ops.segment_sum(
    valid.reshape(-1).astype(jnp.int32), g_idx.reshape(-1), num_segments=num_all + 1
  )[:num_all]
  col_start = jnp.cumsum(col_count) - col_count

  def step(seen, row):
    cols, ok = row
    pos = seen[cols]
    return seen.at[cols].add(ok.astype(jnp.int32), mode="drop"), pos

  _, within = jax.lax.scan(step, jnp.zeros(num_all + 1, jnp.int32), (g_idx, valid))
  slot = jnp.where(valid, col_start[jnp.minimum(g_idx, num_all - 1)] + within, nnz)
  g_rows = jnp.broadcast_to(jnp.arange(g_idx.shape[0], dtype=jnp.int32)[:, None], g_idx.shape)
  rows = jnp.zeros(nnz, jnp.int32).at[slot.reshape(-1)].set(g_rows.reshape(-1), mode="drop")
  vals = jnp.zeros(nnz, jnp.float32).at[slot.reshape(-1)].set(g_val.reshape(-1), mode="drop")
  return InvertedIndex(col_count, col_start, rows, vals)


@functools.partial(jax.jit, static_argnames=("budget", "lambda_value", "squared"))
def final_rows(
  q_idx: jax.Array,
  q_val: jax.Array,
  index: InvertedIndex,
  q_g: jax.Array,
  row_max: jax.Array,
  start: jax.Array,
  budget: int,
  lambda_value: float,
  squared: bool = False,
) -> jax.Array:
  """Final distances of a block of r query rows, start..start+r-1.

  Args:
    q_idx, q_val: [r, W] sparse rows of V of those queries (padding index = A; rows
      that are all padding give a Jaccard distance of 1).
    index: `inverted_index` of the gallery rows.
    q_g: [Q, G] original query-gallery distances; row_max: [A] column maxima of D.
    start: first query row of the block.
    budget: static number of (query entry, gallery entry) pairs processed; >= the
      block's true number.
    lambda_value: weight of the original distance.
    squared: square the q_g distances, as `_dt_rows`.

  Returns:
    float32 [r, G]: jaccard * (1 - lambda) + original / column max * lambda.
  """
  col_count, col_start, inv_rows, inv_vals = index
  r, width = q_idx.shape
  num_gallery = q_g.shape[1]
  num_all = col_count.shape[0]
  flat_idx = q_idx.reshape(-1)
  flat_val = q_val.reshape(-1)
  valid = flat_idx < num_all
  col = jnp.minimum(flat_idx, num_all - 1)
  count = jnp.where(valid, col_count[col], 0)
  first = jnp.cumsum(count) - count
  total = jnp.sum(count)
  entry = jnp.repeat(
    jnp.arange(flat_idx.shape[0], dtype=jnp.int32), count, total_repeat_length=budget
  )
  pair = jnp.arange(budget, dtype=jnp.int32)
  in_use = pair < total
  slot = jnp.where(in_use, col_start[col[entry]] + pair - first[entry], 0)
  contrib = jnp.where(in_use, jnp.minimum(flat_val[entry], inv_vals[slot]), 0.0)
  target = jnp.where(in_use, (entry // width) * num_gallery + inv_rows[slot], r * num_gallery)
  overlap = jax.ops.segment_sum(contrib, target, num_segments=r * num_gallery + 1)[:-1]
  overlap = overlap.reshape(r, num_gallery)
  jaccard = 1 - overlap / (2 - overlap)
  rows = jax.lax.dynamic_slice(q_g, (start, 0), (r, num_gallery)).astype(jnp.float32)
  if squared:
    rows = rows * rows
  original = rows / jax.lax.dynamic_slice(row_max, (start,), (r,))[:, None]
  return jaccard * (1 - lambda_value) + original * lambda_value


def _min_overlap_table(size: int) -> np.ndarray:
  """[size + 1] smallest integer n with n > 2/3 * L, with the reference's float arithmetic."""
  return np.array([int(np.floor(2.0 / 3 * n)) + 1 for n in range(size + 1)], np.int32)


def _as_block(name: str, x, shape: tuple[int, int]) -> jax.Array:
  inputs.distance_matrix_shape(name, x, *shape)
  return jnp.asarray(x, jnp.float32)


def re_ranking(
  q_g_dist,
  q_q_dist,
  g_g_dist,
  *,
  k1: int = 20,
  k2: int = 6,
  lambda_value: float = 0.3,
  row_chunk: int = DEFAULT_ROW_CHUNK,
  query_rows: int = DEFAULT_QUERY_ROWS,
  symmetric: bool = False,
  squared: bool = False,
) -> np.ndarray:
  """k-reciprocal re-ranked query-gallery distances (torchreid's `re_ranking` signature).

  Args:
    q_g_dist: [Q, G] query-gallery distances.
    q_q_dist: [Q, Q] query-query distances.
    g_g_dist: [G, G] gallery-gallery distances. (NumPy arrays are copied to the
      device once; jax.Arrays are used in place.)
    k1, k2, lambda_value: the paper's parameters (20, 6, 0.3).
    row_chunk: rows of D^T ranked per device call.
    query_rows: query rows per Jaccard block (a block's pair count is also bounded).
    symmetric: q_q_dist and g_g_dist are symmetric (true of any distance): read them
      by rows rather than columns, which skips transposing them (the ranking pass
      gets faster). Same result as False when they are exactly symmetric.
    squared: square the given distances first, as fast-reid's and torchreid's
      `re_ranking` do (they square whatever they are given); False uses them as
      given, as BoT's feature-based `re_ranking` and Zhong et al.'s code do with the
      squared Euclidean distance. See the module doc for which setting reproduces
      which peer.

  Returns:
    float32 np.ndarray [Q, G], smaller is more similar; score it with
    `metrics.evaluate`.

  Raises:
    EvaluationInputError: shapes disagree, non-finite distances, an image whose
      distances are all <= 0, or a parameter out of range.
  """
  shape = tuple(getattr(q_g_dist, "shape", np.shape(q_g_dist)))
  if len(shape) != 2 or 0 in shape:
    raise inputs.EvaluationInputError(
      f"q_g_dist must be a non-empty [num_query, num_gallery] matrix, got shape {shape}."
    )
  nq, ng = shape
  check_parameters(k1, k2, lambda_value)
  q_g = _as_block("q_g_dist", q_g_dist, (nq, ng))
  q_q = _as_block("q_q_dist", q_q_dist, (nq, nq))
  g_g = _as_block("g_g_dist", g_g_dist, (ng, ng))
  num_all = nq + ng
  k1_top = min(k1 + 1, num_all)
  k1_half = min(int(np.around(k1 / 2.0)) + 1, num_all)
  k2 = min(k2, num_all)
  blocks = (q_q, q_g, g_g)
  rank, row_max = _initial_ranking(
    blocks, k1_top=k1_top, row_chunk=row_chunk, symmetric=symmetric, squared=squared
  )
  v_idx, v_val = _k_reciprocal_encoding(
    blocks,
    rank,
    row_max,
    k1_half=k1_half,
    row_chunk=row_chunk,
    symmetric=symmetric,
    squared=squared,
  )
  if k2 != 1:
    v_idx, v_val = local_query_expansion(rank[:, :k2], v_idx, v_val, row_chunk=row_chunk)
  return _jaccard_and_blend(
    v_idx,
    v_val,
    q_g,
    row_max,
    lambda_value=float(lambda_value),
    query_rows=query_rows,
    squared=squared,
  )


Blocks = tuple[jax.Array, jax.Array, jax.Array]  # (q_q, q_g, g_g) float32 on the device


def _initial_ranking(
  blocks: Blocks, *, k1_top: int, row_chunk: int, symmetric: bool, squared: bool
) -> tuple[jax.Array, jax.Array]:
  """Stage 1: the stable initial ranking (top `k1_top`) of the normalised rows of D^T.

  Args:
    blocks: (q_q [Q, Q], q_g [Q, G], g_g [G, G]).
    k1_top: neighbours kept per row (k1 + 1, at most A = Q + G).
    row_chunk, symmetric, squared: as `re_ranking`.

  Returns:
    (rank int32 [A, k1_top] neighbour indices, row_max float32 [A] row maxima).

  Raises:
    EvaluationInputError: an image with non-finite distances or none > 0.
  """
  q_q, q_g, g_g = blocks
  nq, ng = q_g.shape
  num_all = nq + ng
  rank = np.empty((num_all, k1_top), np.int32)
  row_max = np.empty(num_all, np.float32)
  ok = np.empty(num_all, bool)
  pending = []
  for offset, num, gallery in ((0, nq, False), (nq, ng, True)):
    size = max(1, min(int(row_chunk), num))
    for s in row_starts(num, size):
      out = _initial_rank(q_q, q_g, g_g, s, k1_top, size, gallery, symmetric, squared)
      pending.append((offset + s, size, out))
  for s, size, (top, mx, good) in pending:
    rank[s : s + size], row_max[s : s + size], ok[s : s + size] = top, mx, good
  check_initial_ranking(ok)
  return jnp.asarray(rank), jnp.asarray(row_max)


def check_parameters(k1: int, k2: int, lambda_value: float) -> None:
  """Raises EvaluationInputError unless k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1."""
  if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
    raise inputs.EvaluationInputError(
      f"Need k1 >= 1, k2 >= 1 and 0 <= lambda <= 1; got k1={k1}, k2={k2}, lambda={lambda_value}."
    )


def check_initial_ranking(ok: np.ndarray) -> None:
  """Raises EvaluationInputError naming the first image whose distances are non-finite
  or none > 0 (`ok`: bool [A], per image, queries first)."""
  if not ok.all():
    bad = int(np.argmin(ok))
    raise inputs.EvaluationInputError(
      f"Re-ranking: image {bad} of the {ok.shape[0]} query+gallery images (queries first) has "
      "non-finite distances or none > 0 (its column of [[q_q, q_g], [q_g^T, g_g]])."
    )


def _k_reciprocal_encoding(
  blocks: Blocks,
  rank: jax.Array,
  row_max: jax.Array,
  *,
  k1_half: int,
  row_chunk: int,
  symmetric: bool,
  squared: bool,
) -> tuple[jax.Array, jax.Array]:
  """Stages 2-3: k-reciprocal sets, their 2/3-overlap expansion, and the sparse V.

  Args:
    blocks: (q_q, q_g, g_g).
    rank: int32 [A, k1 + 1] from `_initial_ranking`; row_max: float32 [A].
    k1_half: size of the half sets (round(k1 / 2) + 1, at most A).
    row_chunk, symmetric, squared: as `re_ranking`.

  Returns:
    (v_idx int32 [A, W] sorted expansion-set indices padded with A, v_val float32
    [A, W] row-normalised Gaussian weights).
  """
  q_q, q_g, g_g = blocks
  v_idx = expansion_set_table(rank, k1_half=k1_half, row_chunk=row_chunk)
  return v_idx, _weights(q_q, q_g, g_g, row_max, v_idx, symmetric, squared)


def expansion_set_table(rank: jax.Array, *, k1_half: int, row_chunk: int) -> jax.Array:
  """Stage 2: every image's de-duplicated k-reciprocal expansion set.

  Args:
    rank: int32 [A, k1 + 1] the stable initial ranking (`_initial_ranking`).
    k1_half: size of the half sets (round(k1 / 2) + 1, at most A).
    row_chunk: rows expanded per device call.

  Returns:
    int32 [A, W] each row's set in increasing order, padded with A (W: the largest set).
  """
  num_all = rank.shape[0]
  recip = _reciprocal(rank)
  half = _reciprocal(rank[:, :k1_half])
  min_overlap = jnp.asarray(_min_overlap_table(k1_half))
  size = max(1, min(int(row_chunk), num_all))
  starts = row_starts(num_all, size)
  sets = [
    _expansion_sets(
      jnp.arange(s, s + size, dtype=jnp.int32), rank, recip, half, min_overlap, num_all
    )
    for s in starts
  ]
  width = max(1, max(int(jnp.max(cnt)) for _, cnt in sets))
  v_idx = np.empty((num_all, width), np.int32)
  for s, (idx, _) in zip(starts, sets, strict=True):
    v_idx[s : s + size] = np.asarray(idx[:, :width])
  return jnp.asarray(v_idx)


def local_query_expansion(
  neighbours: jax.Array, v_idx: jax.Array, v_val: jax.Array, *, row_chunk: int
) -> tuple[jax.Array, jax.Array]:
  """Stage 4: each row of V replaced by the mean of the V rows of its k2 nearest.

  Args:
    neighbours: int32 [A, k2] the first k2 columns of the initial ranking.
    v_idx, v_val: sparse V [A, W] from `_k_reciprocal_encoding`.
    row_chunk: rows merged per device call.

  Returns:
    The expanded sparse V (v_idx int32 [A, W'], v_val float32 [A, W']).
  """
  num_all = v_idx.shape[0]
  size = max(1, min(int(row_chunk), num_all))
  starts = row_starts(num_all, size)
  merged = [
    _query_expansion(jnp.arange(s, s + size, dtype=jnp.int32), neighbours, v_idx, v_val, num_all)
    for s in starts
  ]
  width = max(1, max(int(jnp.max(cnt)) for _, _, cnt in merged))
  new_idx = np.empty((num_all, width), np.int32)
  new_val = np.empty((num_all, width), np.float32)
  for s, (idx, val, _) in zip(starts, merged, strict=True):
    new_idx[s : s + size], new_val[s : s + size] = idx[:, :width], val[:, :width]
  return jnp.asarray(new_idx), jnp.asarray(new_val)


def _jaccard_and_blend(
  v_idx: jax.Array,
  v_val: jax.Array,
  q_g: jax.Array,
  row_max: jax.Array,
  *,
  lambda_value: float,
  query_rows: int,
  squared: bool,
) -> np.ndarray:
  """Stage 5: the Jaccard distance of query and gallery V rows, blended with the
  original distance.

  The numerator goes through an inverted index of the gallery rows, in blocks of at
  most `query_rows` queries and a power-of-two budget of (query entry, gallery entry)
  pairs.

  Args:
    v_idx, v_val: sparse V [A, W] (queries first).
    q_g: float32 [Q, G] original query-gallery distances.
    row_max: float32 [A] row maxima of the initial ranking.
    lambda_value, query_rows, squared: as `re_ranking`.

  Returns:
    float32 np.ndarray [Q, G] re-ranked distances.
  """
  nq, ng = q_g.shape
  num_all = nq + ng
  g_idx, g_val = v_idx[nq:], v_val[nq:]
  nnz = max(1, int(jnp.sum(g_idx < num_all)))
  index = inverted_index(g_idx, g_val, num_all, nnz)

  def run_block(q_idx, q_val, first, budget):
    return final_rows(q_idx, q_val, index, q_g, row_max, first, budget, lambda_value, squared)

  return jaccard_in_blocks(
    np.asarray(v_idx[:nq]),
    np.asarray(v_val[:nq]),
    np.asarray(index.col_count),
    ng,
    query_rows=query_rows,
    run_block=run_block,
  )


def jaccard_in_blocks(
  q_idx: np.ndarray,
  q_val: np.ndarray,
  col_count: np.ndarray,
  num_gallery: int,
  *,
  query_rows: int,
  run_block,
) -> np.ndarray:
  """Stage 5's blocking: query rows in fixed-size windows of at most `query_rows` rows
  and a power-of-two budget of (query entry, gallery entry) pairs, one device call each
  (the next one dispatched before the previous one is copied back).

  Args:
    q_idx, q_val: [Q, W] sparse query rows of V (padding index = A).
    col_count: int [A] gallery entries per column of V (or an upper bound of them).
    num_gallery: G.
    query_rows: rows per window (`re_ranking`).
    run_block: `(q_idx [b, W], q_val [b, W], first, budget) -> [b, G]` the final
      distances of the window's rows first..first+b-1, where rows outside the block
      are given as padding (their output is ignored).

  Returns:
    float32 np.ndarray [Q, G].
  """
  nq = q_idx.shape[0]
  num_all = col_count.shape[0]
  pairs_per_row = np.append(col_count, 0).astype(np.int64)[q_idx].sum(axis=1)
  # Power-of-two pair budget: the whole problem if small, else _PAIR_BUDGET (or the
  # largest single row, if bigger).
  budget = _round_up_pow2(
    max(int(pairs_per_row.max(initial=1)), min(int(pairs_per_row.sum()), _PAIR_BUDGET), 1)
  )
  block = max(1, min(int(query_rows), nq))
  final = np.empty((nq, num_gallery), np.float32)
  pending = []
  start = 0
  while start < nq:  # blocks of <= `block` queries and <= `budget` pairs
    cum = np.cumsum(pairs_per_row[start : start + block])
    stop = start + max(1, int(np.searchsorted(cum, budget, side="right")))
    first = min(start, nq - block)  # fixed-size window holding start..stop-1
    keep = (np.arange(first, first + block) >= start) & (np.arange(first, first + block) < stop)
    qi = np.where(keep[:, None], q_idx[first : first + block], num_all)
    qv = np.where(keep[:, None], q_val[first : first + block], 0.0).astype(np.float32)
    pending.append((start, stop, first, run_block(qi, qv, first, budget)))
    if len(pending) > 1:
      s0, e0, f0, o0 = pending.pop(0)
      final[s0:e0] = np.asarray(o0)[s0 - f0 : e0 - f0]
    start = stop
  for s0, e0, f0, o0 in pending:
    final[s0:e0] = np.asarray(o0)[s0 - f0 : e0 - f0]
  return final


def re_ranking_features(
  q_feats,
  g_feats,
  *,
  metric: str = "cosine",
  k1: int = 20,
  k2: int = 6,
  lambda_value: float = 0.3,
  row_chunk: int = DEFAULT_ROW_CHUNK,
  query_rows: int = DEFAULT_QUERY_ROWS,
  squared: bool = False,
) -> np.ndarray:
  """`re_ranking` of the distances `distance.pairwise_distance` gives for the features.

  The q-q and g-g blocks are distances, hence symmetric (bitwise, on CPU, for XLA's
  products), and are read by rows (`symmetric=True`).

  Args:
    q_feats: [Q, D] query features; g_feats: [G, D] gallery features (finite).
    metric: 'cosine' or 'euclidean' (see the module doc).
    k1, k2, lambda_value, row_chunk, query_rows, squared: as `re_ranking`.

  Returns:
    float32 np.ndarray [Q, G] re-ranked distances.
  """
  distance_lib.check_metric(metric)
  q_feats, g_feats = (jnp.asarray(f) for f in inputs.feature_pair(q_feats, g_feats))
  pdist = functools.partial(distance_lib.pairwise_distance, metric=metric)
  return re_ranking(
    pdist(q_feats, g_feats),
    pdist(q_feats, q_feats),
    pdist(g_feats, g_feats),
    k1=k1,
    k2=k2,
    lambda_value=lambda_value,
    row_chunk=row_chunk,
    query_rows=query_rows,
    symmetric=True,  # pairwise_distance(x, x) is symmetric
    squared=squared,
  )
