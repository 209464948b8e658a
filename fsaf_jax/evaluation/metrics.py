"""CMC, mAP and mINP of the Market-1501 protocol, vectorised in JAX, chunked over queries.

Protocol (torchreid's / fast-reid's `eval_market1501`):

- For each query, the gallery items with the query's pid AND the query's camera are
  removed from its ranked list; so are junk items (gallery pid < 0, Market-1501's
  pid -1: torchreid and fast-reid drop them when loading the dataset, which is what
  removing them from every list amounts to).
- Positives are the remaining gallery items with the query's pid. Distractors (Market's
  gallery pid 0) need no special case: no query carries their pid, so they are
  negatives for everyone (and MSMT17's identity 0, a real person, stays valid). A query
  with a negative pid has no positive.
- Queries with no positive left are skipped (counted in `num_skipped`, and a warning
  gives the count); if every query is skipped the input is rejected.
- Rank-k (CMC, cut at `max_rank`): the fraction of valid queries whose first positive
  is within the top k. AP: non-interpolated, over the whole ranked list,
  `mean_k k / rank_k` with `rank_k` the 1-based position of the k-th positive. INP:
  `#positives / rank of the hardest (last) positive`. Positions are counted in the
  filtered list, as torchreid / fast-reid do.
- Ties (equal distances) are broken by gallery index, i.e. the ranking is a stable
  sort by distance (`np.argsort(kind='stable')`). Distances are compared in float32.

Algorithm. Sorting each query's row is slow on CPU (XLA:CPU's sort is a comparator
sort per row), so nothing is sorted: the rank of a positive is 1 + the number of
valid gallery items ranked before it. For a chunk of queries with (at most) P
positives each, fused elementwise passes over the chunk's [chunk, N] distances (16
positives per pass, nothing of size [chunk, N, P] is stored) give, for each gallery
item n, `b_n` = the number of positives ranked before n; a histogram of `b_n` over the
negatives (`segment_sum`) then gives the rank of every positive at once: the k-th
positive (in ranked order) has rank `k + #{negatives n : b_n < k}`. The first
positive's rank gives the CMC directly, so no top-k is needed either. Queries are
processed in order of their number of positives, so P (padded to a power of two) fits
each chunk. The float64 AP / INP / CMC arithmetic on the resulting integer ranks runs
on the host. The reference is the per-query NumPy loop in
`tests/reference/reid_metrics_numpy.py`; `benchmarks/evaluation.py` times this module
beside fast-reid's Cython `evaluate_rank` (figures in docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsaf_jax.evaluation import distance as distance_lib
from fsaf_jax.evaluation import inputs, mesh_arrays

DEFAULT_QUERY_CHUNK = 256
_MIN_POSITIVE_BUCKET = 8
_POSITIVE_BLOCK = 16  # positives compared per pass over a chunk's distances
REPORTED_RANKS = (1, 5, 10, 20)
# The scalar metrics, named once: `RankMetrics.scalars` / `as_dict`, metrics.json, the
# table (`report.metrics_table`), TensorBoard and `EvalResult.metrics`.
METRIC_NAMES = (*(f"rank{k}" for k in REPORTED_RANKS), "mAP", "mINP")


@dataclasses.dataclass(frozen=True)
class RankMetrics:
  """Ranking metrics of one evaluation.

  Attributes:
    cmc: float64 [max_rank]; `cmc[k - 1]` is Rank-k (a fraction in [0, 1]).
    mAP: mean average precision over the valid queries, in [0, 1].
    mINP: mean inverse negative penalty over the valid queries, in [0, 1].
    num_valid: queries scored.
    num_skipped: queries skipped because no positive was left in the gallery.
  """

  cmc: np.ndarray
  mAP: float
  mINP: float
  num_valid: int
  num_skipped: int

  def rank(self, k: int) -> float:
    """Rank-k accuracy (fraction), k >= 1."""
    if not 1 <= k <= len(self.cmc):
      raise ValueError(f"Rank-{k} is not available: the CMC has {len(self.cmc)} ranks.")
    return float(self.cmc[k - 1])

  def scalars(self) -> dict[str, float]:
    """{name: value} of `METRIC_NAMES` (fractions); ranks beyond the CMC are left out."""
    out = {f"rank{k}": self.rank(k) for k in REPORTED_RANKS if k <= len(self.cmc)}
    out.update(mAP=float(self.mAP), mINP=float(self.mINP))
    return out

  def as_dict(self) -> dict[str, Any]:
    """JSON-ready dict: `scalars()` (rank1/5/10/20 within the CMC, mAP, mINP), counts, cmc."""
    out: dict[str, Any] = self.scalars()
    out.update(
      num_valid=int(self.num_valid),
      num_skipped=int(self.num_skipped),
      cmc=[float(x) for x in self.cmc],
    )
    return out


def positive_lists(
  q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Gallery positives of every query (same pid, other camera, pid >= 0).

  Args:
    q_pids, q_camids: int [M].
    g_pids, g_camids: int [N].

  Returns:
    counts: int64 [M], the number of positives of each query.
    table: int32 [M, max(counts)] gallery indices of the positives in increasing
      order, padded with N.
  """
  n = g_pids.shape[0]
  order = np.argsort(g_pids, kind="stable")
  sorted_pids = g_pids[order]
  start = np.searchsorted(sorted_pids, q_pids, side="left")
  same = np.searchsorted(sorted_pids, q_pids, side="right") - start
  same[q_pids < 0] = 0
  width = int(same.max(initial=0))
  if width == 0:
    return np.zeros(q_pids.shape[0], np.int64), np.full((q_pids.shape[0], 0), n, np.int32)
  offsets = np.arange(width)
  in_range = offsets[None, :] < same[:, None]
  gidx = order[np.minimum(start[:, None] + offsets[None, :], n - 1)]
  ok = in_range & (g_camids[gidx] != q_camids[:, None])
  gidx = np.where(ok, gidx, n)
  counts = ok.sum(axis=1).astype(np.int64)
  table = np.sort(gidx, axis=1)[:, : int(counts.max(initial=0))].astype(np.int32)
  return counts, table


def _bucket(p: int) -> int:
  """Padded number of positives of a chunk: a power of two >= max(p, 8)."""
  return max(_MIN_POSITIVE_BUCKET, 1 << (max(p, 1) - 1).bit_length())


def _count_positives_before(dist: jax.Array, pos_dist: jax.Array, pos_idx: jax.Array) -> jax.Array:
  """b[c, i] = number of positives of query c ranked before gallery item i.

  Args:
    dist: float32 [C, N]; pos_dist: float32 [C, P] (padding +inf); pos_idx: int32 [C, P].

  Returns:
    int32 [C, N].

  The P comparisons per item are summed as elementwise terms, `_POSITIVE_BLOCK` per
  pass over [C, N] (a loop over P / block passes), which XLA fuses into one loop
  without materialising [C, N, P] (a `jnp.sum` over a [C, N, P] comparison made XLA:CPU
  allocate it: gigabytes at MSMT17 scale, docs/performance.md).
  """
  c, n = dist.shape
  p = pos_idx.shape[1]
  block = min(p, _POSITIVE_BLOCK)
  gallery_index = jnp.arange(n, dtype=jnp.int32)[None, :]

  def body(j, b):
    pd = jax.lax.dynamic_slice_in_dim(pos_dist, j * block, block, axis=1)
    pi = jax.lax.dynamic_slice_in_dim(pos_idx, j * block, block, axis=1)
    for t in range(block):
      d_t, i_t = pd[:, t : t + 1], pi[:, t : t + 1]
      before = (d_t < dist) | ((d_t == dist) & (i_t < gallery_index))
      b = b + before.astype(jnp.int32)
    return b

  return jax.lax.fori_loop(0, p // block, body, jnp.zeros((c, n), jnp.int32))


def _positive_bins(
  dist: jax.Array, pos_idx: jax.Array, q_pids: jax.Array, g_pids: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Histogram bins of the gallery items of a chunk of queries (traceable).

  Args:
    dist: float32 [C, N] distances of C queries to the gallery.
    pos_idx: int32 [C, P] gallery indices of each query's positives (same pid, other
      camera), padded with N. Same-pid same-camera items are thereby excluded.
    q_pids: int32 [C].
    g_pids: int32 [N].

  Returns:
    bins: int32 [C, N]; for a negative (other pid, not junk) the number of positives
      ranked before it if < P, else P; P for every other item.
    finite: bool scalar, whether every distance was finite.
  """
  n = dist.shape[1]
  p = pos_idx.shape[1]
  negative = (g_pids[None, :] != q_pids[:, None]) & (g_pids >= 0)[None, :]
  pos_dist = jnp.take_along_axis(dist, jnp.minimum(pos_idx, n - 1), axis=1)
  pos_dist = jnp.where(pos_idx >= n, jnp.inf, pos_dist)  # padding ranks after everything
  b = _count_positives_before(dist, pos_dist, pos_idx)
  return jnp.where(negative & (b < p), b, p), jnp.all(jnp.isfinite(dist))


@functools.partial(jax.jit, static_argnames="num_pos")
def _ranks_from_bins(bins: jax.Array, num_pos: int) -> jax.Array:
  """Ranks [C, P] of the positives from `_positive_bins` output.

  `ranks[c, k - 1]` is the 1-based position, in the filtered ranked list of query c,
  of its k-th positive (meaningful for k <= #positives): k + #{negatives with fewer
  than k positives before them}. A separate compiled call: fused with the counting,
  XLA:CPU ran the chunk several times slower (docs/performance.md).
  """
  c = bins.shape[0]
  p = num_pos
  segments = (bins + (p + 1) * jnp.arange(c, dtype=jnp.int32)[:, None]).reshape(-1)
  hist = jax.ops.segment_sum(
    jnp.ones(segments.shape, jnp.int32), segments, num_segments=c * (p + 1)
  ).reshape(c, p + 1)
  neg_before = jnp.cumsum(hist[:, :p], axis=1)  # [:, k-1] = #negatives with b < k
  return jnp.arange(1, p + 1, dtype=jnp.int32)[None, :] + neg_before


@jax.jit
def _bins_distmat_chunk(dist, pos_idx, q_pids, g_pids):
  return _positive_bins(jnp.asarray(dist, jnp.float32), pos_idx, q_pids, g_pids)


@jax.jit
def _bins_device_distmat_chunk(distmat, rows, pos_idx, q_pids, g_pids):
  dist = jnp.take(distmat, rows, axis=0).astype(jnp.float32)
  return _positive_bins(dist, pos_idx, q_pids, g_pids)


@jax.jit
def _take_prepared_rows(prep: distance_lib.Prepared, rows: jax.Array) -> distance_lib.Prepared:
  # Its own compiled call: gathered rows fused into the product hit the slow YNN path.
  return distance_lib.Prepared(prep.feats[rows], prep.sq_norms[rows])


@functools.partial(jax.jit, static_argnames="metric")
def _bins_features_chunk(q_prep, g_prep, pos_idx, q_pids, g_pids, metric):
  dist = distance_lib.distance_from_prepared(q_prep, g_prep, metric)
  return _positive_bins(dist, pos_idx, q_pids, g_pids)


def _check_max_rank(max_rank: int, num_gallery: int) -> int:
  if int(max_rank) < 1:
    raise inputs.EvaluationInputError(f"max_rank must be >= 1, got {max_rank}.")
  if max_rank > num_gallery:
    warnings.warn(
      f"max_rank={max_rank} exceeds the gallery size {num_gallery}: the CMC is cut at "
      f"{num_gallery} (as torchreid does).",
      stacklevel=3,
    )
  return min(int(max_rank), num_gallery)


def _run_chunks(
  run_chunk: Callable[[np.ndarray, np.ndarray], tuple[jax.Array, jax.Array]],
  counts: np.ndarray,
  table: np.ndarray,
  num_gallery: int,
  query_chunk: int,
) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
  """Runs `run_chunk(query_indices [C], pos_idx [C, P])` over the valid queries.

  Queries are taken in order of their number of positives, C = min(query_chunk,
  #valid), the last chunk padded by repeating a query, P a power of two per chunk.

  Returns:
    query ids per chunk, ranks per chunk (int [n_chunk, P]), and whether every
    distance was finite.
  """
  if int(query_chunk) < 1:
    raise inputs.EvaluationInputError(f"query_chunk must be >= 1, got {query_chunk}.")
  valid = np.nonzero(counts > 0)[0]
  order = valid[np.argsort(counts[valid], kind="stable")]
  chunk = min(int(query_chunk), order.shape[0])
  chunk_ids, chunk_ranks, all_finite = [], [], True
  pending = []

  def collect():
    nonlocal all_finite
    idx, (ranks, finite) = pending.pop(0)
    chunk_ids.append(idx)
    chunk_ranks.append(mesh_arrays.to_host(ranks)[: idx.shape[0]])
    all_finite &= bool(mesh_arrays.to_host(finite))

  for start in range(0, order.shape[0], chunk):
    idx = order[start : start + chunk]
    num = idx.shape[0]
    p = _bucket(int(counts[idx].max()))
    idx_padded = np.concatenate([idx, np.full(chunk - num, idx[0])]) if num < chunk else idx
    pos = np.full((chunk, p), num_gallery, np.int32)
    width = min(p, table.shape[1])
    pos[:, :width] = table[idx_padded, :width]
    pending.append((idx, run_chunk(idx_padded, pos)))
    if len(pending) > 2:  # a couple of chunks in flight, not all their inputs at once
      collect()
  while pending:
    collect()
  return chunk_ids, chunk_ranks, all_finite


def _metrics_from_ranks(
  chunk_ids: Sequence[np.ndarray], chunk_ranks: Sequence[np.ndarray], counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-query AP, INP and first-positive rank (float64 / int) from positive ranks."""
  ap, inp, first = [], [], []
  for idx, ranks in zip(chunk_ids, chunk_ranks, strict=True):
    num_pos = counts[idx]
    k = np.arange(1, ranks.shape[1] + 1)
    used = k[None, :] <= num_pos[:, None]
    ranks = ranks.astype(np.float64)
    ap.append(np.where(used, k[None, :] / ranks, 0.0).sum(axis=1) / num_pos)
    inp.append(num_pos / ranks[np.arange(idx.shape[0]), num_pos - 1])
    first.append(ranks[:, 0])
  return np.concatenate(ap), np.concatenate(inp), np.concatenate(first)


def _finish(
  chunk_ids, chunk_ranks, finite: bool, counts: np.ndarray, max_rank: int, what: str
) -> RankMetrics:
  if not finite:
    raise inputs.EvaluationInputError(f"{what} has non-finite (NaN or inf) distances.")
  ap, inp, first = _metrics_from_ranks(chunk_ids, chunk_ranks, counts)
  cmc = (first[:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(axis=0)
  return RankMetrics(
    cmc=cmc,
    mAP=float(ap.mean()),
    mINP=float(inp.mean()),
    num_valid=int(ap.shape[0]),
    num_skipped=int(counts.shape[0] - ap.shape[0]),
  )


def check_has_positives(q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, np.ndarray]:
  """`positive_lists` (counts, table), checked: some query has a positive.

  Needs only the ids, so a run checks its evaluation data before training (`Evaluator`).

  Raises:
    inputs.EvaluationInputError: no query has a positive (same pid, other camera).
  """
  counts, table = positive_lists(q_pids, q_camids, g_pids, g_camids)
  if int((counts == 0).sum()) == counts.shape[0]:
    raise inputs.EvaluationInputError(
      f"None of the {counts.shape[0]} queries has a positive in the gallery (same pid, "
      "other camera): nothing to score. Do query and gallery pids use the same labels?"
    )
  return counts, table


def _count_positives(q_pids, g_pids, q_camids, g_camids) -> tuple[np.ndarray, np.ndarray]:
  counts, table = check_has_positives(q_pids, g_pids, q_camids, g_camids)
  num_skipped = int((counts == 0).sum())
  if num_skipped:
    warnings.warn(
      f"{num_skipped} of {counts.shape[0]} queries have no positive in the gallery (same "
      "pid, other camera) and are skipped: CMC, mAP and mINP average over the other "
      f"{counts.shape[0] - num_skipped}.",
      stacklevel=3,
    )
  return counts, table


def _check_int32(*ids: np.ndarray) -> None:
  for x in ids:
    if x.size and (x.max() > np.iinfo(np.int32).max or x.min() < np.iinfo(np.int32).min):
      raise inputs.EvaluationInputError("Person ids must fit in int32.")


def evaluate(
  distmat,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  *,
  max_rank: int = 50,
  query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> RankMetrics:
  """Market-1501-protocol metrics from a query-gallery distance matrix.

  Args:
    distmat: [M, N] distances (NumPy or jax.Array; compared in float32), smaller is
      more similar.
    q_pids, g_pids: int [M], [N] person ids (gallery pid < 0 = junk, see module doc).
    q_camids, g_camids: int [M], [N] camera ids.
    max_rank: CMC length (cut at N with a warning if larger).
    query_chunk: queries scored per device call; bounds device memory to
      ~query_chunk x N floats.

  Returns:
    RankMetrics.

  Raises:
    EvaluationInputError: shapes disagree, empty sets, non-finite distances, or no
      query has a positive.
  """
  q_pids, g_pids, q_camids, g_camids = inputs.query_gallery_ids(q_pids, g_pids, q_camids, g_camids)
  inputs.distance_matrix_shape("distmat", distmat, q_pids.shape[0], g_pids.shape[0])
  max_rank, counts, table = _positives_and_max_rank(q_pids, g_pids, q_camids, g_camids, max_rank)
  gp = jnp.asarray(g_pids, jnp.int32)
  on_device = isinstance(distmat, jax.Array)
  if not on_device:
    distmat = np.asarray(distmat)

  # Per-chunk inputs are NumPy (ids indexed on the host): eager jax.Array indexing in
  # this loop cost more than the kernels.
  def run_chunk(idx, pos):
    q = q_pids[idx].astype(np.int32)
    if on_device:
      bins, finite = _bins_device_distmat_chunk(distmat, idx.astype(np.int32), pos, q, gp)
    else:
      bins, finite = _bins_distmat_chunk(distmat[idx], pos, q, gp)
    return _ranks_from_bins(bins, pos.shape[1]), finite

  chunks = _run_chunks(run_chunk, counts, table, g_pids.shape[0], query_chunk)
  return _finish(*chunks, counts, max_rank, "distmat")


def _positives_and_max_rank(
  q_pids, g_pids, q_camids, g_camids, max_rank: int
) -> tuple[int, np.ndarray, np.ndarray]:
  """The protocol's set-up shared by the `evaluate*` functions: the checked CMC length
  (cut at the gallery size), the per-query positive counts and table
  (`_count_positives`); ids must fit in int32."""
  max_rank = _check_max_rank(max_rank, g_pids.shape[0])
  counts, table = _count_positives(q_pids, g_pids, q_camids, g_camids)
  _check_int32(q_pids, g_pids)
  return max_rank, counts, table


def _checked_feature_inputs(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids):
  """Validated features [M, D], [N, D] and ids (`inputs`), in the order given.

  Raises:
    inputs.EvaluationInputError: naming the arrays whose shapes do not fit together.
  """
  q_pids, g_pids, q_camids, g_camids = inputs.query_gallery_ids(q_pids, g_pids, q_camids, g_camids)
  q_feats, g_feats = inputs.feature_pair(q_feats, g_feats)
  if q_feats.shape[0] != q_pids.shape[0] or g_feats.shape[0] != g_pids.shape[0]:
    raise inputs.EvaluationInputError(
      f"query features {q_feats.shape} / gallery features {g_feats.shape} do not match "
      f"{q_pids.shape[0]} query and {g_pids.shape[0]} gallery ids."
    )
  return q_feats, g_feats, q_pids, g_pids, q_camids, g_camids


def evaluate_features(
  q_feats,
  g_feats,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  *,
  metric: str = "cosine",
  max_rank: int = 50,
  query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> RankMetrics:
  """Market-1501-protocol metrics from features, never holding the full distance matrix.

  Each chunk of `query_chunk` queries computes its [query_chunk, N] distances
  (`distance.pairwise_distance` numbers) and scores them in the same device call, so
  memory is the features plus one chunk (MSMT17: 11,659 x 82,161 at 2,048-d fits in a
  few GiB).

  Args:
    q_feats: [M, D] query features; g_feats: [N, D] gallery features (finite).
    q_pids, g_pids, q_camids, g_camids: as `evaluate`.
    metric: 'cosine' or 'euclidean' (see `distance`).
    max_rank, query_chunk: as `evaluate`.

  Returns:
    RankMetrics, equal to `evaluate(pairwise_distance(q_feats, g_feats, metric), ...)`.
  """
  distance_lib.check_metric(metric)
  q_feats, g_feats, q_pids, g_pids, q_camids, g_camids = _checked_feature_inputs(
    q_feats, g_feats, q_pids, g_pids, q_camids, g_camids
  )
  max_rank, counts, table = _positives_and_max_rank(q_pids, g_pids, q_camids, g_camids, max_rank)
  gp = jnp.asarray(g_pids, jnp.int32)
  # Prepared once, by their own compiled function (see `distance`).
  q_prep = distance_lib.prepare(jnp.asarray(q_feats), metric)
  g_prep = distance_lib.prepare(jnp.asarray(g_feats), metric)

  def run_chunk(idx, pos):
    q_rows = _take_prepared_rows(q_prep, idx.astype(np.int32))
    q = q_pids[idx].astype(np.int32)
    bins, finite = _bins_features_chunk(q_rows, g_prep, pos, q, gp, metric)
    return _ranks_from_bins(bins, pos.shape[1]), finite

  chunks = _run_chunks(run_chunk, counts, table, g_pids.shape[0], query_chunk)
  return _finish(*chunks, counts, max_rank, "The feature distance matrix")


def _sharded_ranks_fn(mesh: Mesh, axis: str, metric: str, num_gallery: int, num_pos: int):
  """Compiled chunk scorer over a gallery sharded along `axis` (see `evaluate_features_sharded`).

  Each device scores the chunk's queries against its gallery shard: the positives'
  distances are summed across devices (the one device holding a positive contributes
  its distance, the others 0), each device counts, for its items, the positives ranked
  before them (ties by global gallery index) and histograms its negatives; the
  histograms are summed across devices, which gives the ranks as on one device.
  """
  p = num_pos

  def shard(q_feats, q_sq, g_feats, g_sq, g_pids, pos_idx, q_pids):
    n_local = g_feats.shape[0]
    offset = jax.lax.axis_index(axis) * n_local
    dist = distance_lib.distance_from_prepared(
      distance_lib.Prepared(q_feats, q_sq), distance_lib.Prepared(g_feats, g_sq), metric
    )
    local_pos = pos_idx - offset  # global order is kept: ties still break by gallery index
    here = (local_pos >= 0) & (local_pos < n_local)
    pos_dist = jnp.take_along_axis(dist, jnp.clip(local_pos, 0, n_local - 1), axis=1)
    pos_dist = jax.lax.psum(jnp.where(here, pos_dist, 0.0), axis)
    pos_dist = jnp.where(pos_idx >= num_gallery, jnp.inf, pos_dist)  # padding
    b = _count_positives_before(dist, pos_dist, local_pos)
    negative = (g_pids[None, :] != q_pids[:, None]) & (g_pids >= 0)[None, :]
    bins = jnp.where(negative & (b < p), b, p)
    c = bins.shape[0]
    segments = (bins + (p + 1) * jnp.arange(c, dtype=jnp.int32)[:, None]).reshape(-1)
    hist = jax.ops.segment_sum(
      jnp.ones(segments.shape, jnp.int32), segments, num_segments=c * (p + 1)
    ).reshape(c, p + 1)
    hist = jax.lax.psum(hist, axis)
    ranks = jnp.arange(1, p + 1, dtype=jnp.int32)[None, :] + jnp.cumsum(hist[:, :p], axis=1)
    finite = jax.lax.pmin(jnp.all(jnp.isfinite(dist)).astype(jnp.int32), axis)
    return ranks, finite

  rep, gal = PartitionSpec(), PartitionSpec(axis)
  return jax.jit(
    jax.shard_map(
      shard,
      mesh=mesh,
      in_specs=(rep, rep, gal, gal, gal, rep, rep),
      out_specs=(rep, rep),
      check_vma=False,
    )
  )


def evaluate_features_sharded(
  q_feats,
  g_feats,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  mesh: Mesh,
  *,
  axis: str = "data",
  metric: str = "cosine",
  max_rank: int = 50,
  query_chunk: int = DEFAULT_QUERY_CHUNK,
) -> RankMetrics:
  """`evaluate_features` with the gallery sharded over the devices of a mesh axis.

  The gallery features and ids are split along `axis` (padded with junk items, pid -1,
  to a multiple of its size), queries are replicated, and every chunk of queries is
  scored against all shards at once, the per-query counts combined across devices:
  device memory holds 1 / N of the gallery and of each chunk's distances. The ranks
  are exactly those of the distances the devices compute, ties broken by global
  gallery index; those distances equal the one-device ones where the products are
  exact, and may otherwise differ by rounding (XLA's matmul rounding depends on the
  operand shapes, e.g. the shard width), which can flip an exact tie. A 1-device mesh
  gives `evaluate_features`'s figures. Multi-process meshes too: every process passes
  the same features and ids (as every process of a run embeds the whole query and
  gallery sets) and gets the same metrics; each places only its own devices' shards.

  Args:
    q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, metric, max_rank,
      query_chunk: as `evaluate_features`.
    mesh: a `jax.sharding.Mesh` with axis `axis`.
    axis: the mesh axis the gallery is split along.

  Returns:
    RankMetrics.
  """
  distance_lib.check_metric(metric)
  if axis not in mesh.axis_names:
    raise inputs.EvaluationInputError(f"The mesh has axes {mesh.axis_names}, not {axis!r}.")
  q_feats, g_feats, q_pids, g_pids, q_camids, g_camids = _checked_feature_inputs(
    q_feats, g_feats, q_pids, g_pids, q_camids, g_camids
  )
  n = g_pids.shape[0]
  max_rank, counts, table = _positives_and_max_rank(q_pids, g_pids, q_camids, g_camids, max_rank)
  shards = mesh.shape[axis]
  # Global arrays from the host copies (every process holds the same features and
  # places only its own devices' parts), prepared (normalised) where they lie: the
  # gallery never sits whole on one device.
  g_feats_padded = mesh_arrays.pad_rows(np.asarray(g_feats, np.float32), shards)
  g_pids_padded = mesh_arrays.pad_rows(g_pids.astype(np.int32), shards, fill=-1)
  gal = NamedSharding(mesh, PartitionSpec(axis))
  rep = NamedSharding(mesh, PartitionSpec())
  q_host = np.asarray(q_feats, np.float32)
  q_prep = distance_lib.prepare(mesh_arrays.global_array(q_host, rep), metric)
  g_prep = distance_lib.prepare(mesh_arrays.global_array(g_feats_padded, gal), metric)
  gp = mesh_arrays.global_array(g_pids_padded, gal)
  scorers = {}

  def run_chunk(idx, pos):
    p = pos.shape[1]
    if p not in scorers:
      scorers[p] = _sharded_ranks_fn(mesh, axis, metric, n, p)
    q_rows = _take_prepared_rows(q_prep, idx.astype(np.int32))
    pos_dev = mesh_arrays.global_array(pos, rep)
    q = mesh_arrays.global_array(q_pids[idx].astype(np.int32), rep)
    return scorers[p](q_rows.feats, q_rows.sq_norms, g_prep.feats, g_prep.sq_norms, gp, pos_dev, q)

  chunks = _run_chunks(run_chunk, counts, table, n, query_chunk)
  return _finish(*chunks, counts, max_rank, "The feature distance matrix")
