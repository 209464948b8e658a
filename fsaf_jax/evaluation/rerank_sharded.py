"""k-reciprocal re-ranking with the images sharded over a device mesh.

`re_ranking_features_sharded` computes what `rerank.re_ranking_features` computes
without ever holding a distance block on one device: the query + gallery features are
split along a mesh axis, and the stages of `rerank` that read distances run there:

1. Initial ranking: a block of images (replicated) is compared with every device's
   shard of all A = Q + G images; the row maxima are combined across devices (`pmax`),
   each device takes the stable top-(k1 + 1) of its normalised shard, and the N
   candidate lists, in shard order, are merged by a second stable top-k: ties still
   break by the lower global index, as one device's `lax.top_k` does.
2. k-reciprocal expansion sets: from the neighbour table alone (`rerank`, replicated:
   O(A * k1) memory).
3. The weights exp(-d): each block's distances to the device's shard are computed
   again (keeping them from stage 1 is what the split avoids), each device gathers the
   expansion-set entries it holds, and the partial rows are summed across devices
   (`psum`: one device holds each entry).
4. Local query expansion: on the sparse V (`rerank`, replicated: O(A * W)).
5. Jaccard distance and blend: the gallery rows of V and the gallery features are
   split along the axis, each device builds the inverted index of its rows once, then
   scores every block of query rows against its gallery shard; the block's [rows, G]
   result is gathered.

Device memory holds 1 / N of the features and of every distance block; what stays
replicated is the neighbour table and the sparse V (A x a few dozen entries) and one
block of the output. The result is `re_ranking` of the distances the devices compute:
they equal one device's where the products are exact, and may otherwise differ by
rounding (XLA's matmul rounding depends on the operand shapes), which can flip an
exact tie. Multi-process meshes: every process passes the same features and gets the
same [Q, G] result; each places only its own devices' shards.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fsaf_jax.core.mesh import DATA_AXIS
from fsaf_jax.evaluation import distance as distance_lib
from fsaf_jax.evaluation import inputs, mesh_arrays, rerank


class _ShardedImages:
  """The prepared features of all A images, split along `axis`, and the compiled
  per-block kernels of stages 1, 3 and 5."""

  def __init__(self, mesh: Mesh, axis: str, metric: str, squared: bool):
    self.mesh, self.axis, self.metric, self.squared = mesh, axis, metric, squared
    self.rep = NamedSharding(mesh, PartitionSpec())
    self.split = NamedSharding(mesh, PartitionSpec(axis))

  def prepare(self, host: np.ndarray, sharding: NamedSharding) -> distance_lib.Prepared:
    return distance_lib.prepare(mesh_arrays.global_array(host, sharding), self.metric)

  def _shard_map(self, fn, in_specs, out_specs):
    return jax.jit(
      jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    )

  def _distances(self, rows: distance_lib.Prepared, cols: distance_lib.Prepared) -> jax.Array:
    dist = distance_lib.distance_from_prepared(rows, cols, self.metric).astype(jnp.float32)
    return dist * dist if self.squared else dist

  @functools.cached_property
  def rank_block(self):
    """(rows, all images) -> (top int32 [b, k], row max [b], ok [b]) for static k."""
    axis = self.axis

    def build(k: int, num_all: int):
      def shard(r_feats, r_sq, x_feats, x_sq):
        n_local = x_feats.shape[0]
        offset = jax.lax.axis_index(axis) * n_local
        col = offset + jnp.arange(n_local, dtype=jnp.int32)
        valid = (col < num_all)[None, :]
        rows = self._distances(
          distance_lib.Prepared(r_feats, r_sq), distance_lib.Prepared(x_feats, x_sq)
        )
        row_max = jax.lax.pmax(jnp.max(jnp.where(valid, rows, -jnp.inf), axis=1), axis)
        finite = jnp.all(jnp.isfinite(rows) | ~valid, axis=1)
        ok = (row_max > 0) & (jax.lax.pmin(finite.astype(jnp.int32), axis) > 0)
        neg = -(rows / row_max[:, None])
        neg = jnp.where(neg == 0, 0.0, neg)  # as rerank._initial_rank: -0.0 ties 0.0
        neg = jnp.where(valid, neg, -jnp.inf)
        local_k = min(k, n_local)
        val, pos = jax.lax.top_k(neg, local_k)
        # All shards' candidates in shard order, then a stable top-k: equal values keep
        # increasing global index, as one top_k over the whole row.
        val = jax.lax.all_gather(val, axis, axis=1, tiled=True)
        idx = jax.lax.all_gather(pos.astype(jnp.int32) + offset, axis, axis=1, tiled=True)
        top = jnp.take_along_axis(idx, jax.lax.top_k(val, k)[1], axis=1)
        return top, row_max, ok

      rep, split = PartitionSpec(), PartitionSpec(self.axis)
      return self._shard_map(shard, (rep, rep, split, split), (rep, rep, rep))

    return functools.cache(build)

  @functools.cached_property
  def weight_block(self):
    """(rows, all images, idx [b, W], row max [b]) -> V weights [b, W]."""
    axis = self.axis

    def build(num_all: int):
      def shard(r_feats, r_sq, x_feats, x_sq, idx, row_max):
        n_local = x_feats.shape[0]
        offset = jax.lax.axis_index(axis) * n_local
        rows = distance_lib.distance_from_prepared(
          distance_lib.Prepared(r_feats, r_sq), distance_lib.Prepared(x_feats, x_sq), self.metric
        ).astype(jnp.float32)
        local = idx - offset
        here = (local >= 0) & (local < n_local) & (idx < num_all)
        d = jnp.take_along_axis(rows, jnp.clip(local, 0, n_local - 1), axis=1)
        d = jax.lax.psum(jnp.where(here, d, 0.0), axis)  # one device holds each entry
        return rerank.weights_from_distances(d, idx, row_max, num_all, self.squared)

      rep, split = PartitionSpec(), PartitionSpec(self.axis)
      return self._shard_map(shard, (rep, rep, split, split, rep, rep), rep)

    return functools.cache(build)

  def inverted_index(
    self, g_idx: jax.Array, g_val: jax.Array, num_all: int, nnz: int
  ) -> rerank.InvertedIndex:
    """Each device's `rerank.inverted_index` of its gallery rows of V, built once.

    Args:
      g_idx, g_val: [G_pad, W] gallery rows of V, split along the axis.
      num_all: A; nnz: slots per device (the largest shard's entry count).

    Returns:
      `InvertedIndex` whose leaves have a leading device axis ([N, A], [N, nnz]), split
      along the axis: device d holds row d, its own shard's index.
    """

    def shard(g_idx, g_val):
      index = rerank.inverted_index(g_idx, g_val, num_all, nnz)
      return rerank.InvertedIndex(*(leaf[None] for leaf in index))

    split = PartitionSpec(self.axis)
    return self._shard_map(shard, (split, split), split)(g_idx, g_val)

  @functools.cached_property
  def final_block(self):
    """(query rows, V query rows, gallery shard and its inverted index) -> [b, G_pad]."""
    axis = self.axis

    def build(budget: int, lambda_value: float):
      def shard(r_feats, r_sq, g_feats, g_sq, index, q_idx, q_val, row_max):
        index = rerank.InvertedIndex(*(leaf[0] for leaf in index))  # this device's own
        q_g = distance_lib.distance_from_prepared(
          distance_lib.Prepared(r_feats, r_sq), distance_lib.Prepared(g_feats, g_sq), self.metric
        )
        out = rerank.final_rows(
          q_idx, q_val, index, q_g, row_max, 0, budget, lambda_value, self.squared
        )
        return jax.lax.all_gather(out, axis, axis=1, tiled=True)

      rep, split = PartitionSpec(), PartitionSpec(self.axis)
      return self._shard_map(shard, (rep, rep, split, split, split, rep, rep, rep), rep)

    return functools.cache(build)


def _weighted_neighbours(
  images: _ShardedImages,
  x: distance_lib.Prepared,
  everything: np.ndarray,
  *,
  k1_top: int,
  k1_half: int,
  row_chunk: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Stages 1-3 of the re-ranking, each image's row ranked against the sharded `x`.

  Args:
    images: the sharded-images helper of the call.
    x: every image's prepared features, split along the mesh axis.
    everything: [N, D] the query then gallery features (host).
    k1_top, k1_half: the k-reciprocal neighbourhood sizes (k1 + 1, round(k1 / 2) + 1).
    row_chunk: images ranked per device call.

  Returns:
    (rank int32 [N, k1_top], row_max float32 [N], v_idx [N, E], v_val float32 [N, E]):
    the initial ranking, each row's largest distance, the expansion sets (replicated)
    and their weights.
  """
  num_all = everything.shape[0]
  size = max(1, min(int(row_chunk), num_all))
  starts = rerank.row_starts(num_all, size)

  def rows(s: int) -> distance_lib.Prepared:
    return images.prepare(everything[s : s + size], images.rep)

  # Stage 1: the initial ranking.
  rank = np.empty((num_all, k1_top), np.int32)
  row_max = np.empty(num_all, np.float32)
  ok = np.empty(num_all, bool)
  rank_fn = images.rank_block(k1_top, num_all)
  blocks = [(s, rank_fn(*rows(s), *x)) for s in starts]
  for s, (top, mx, good) in blocks:
    host = [mesh_arrays.to_host(a) for a in (top, mx, good)]
    rank[s : s + size], row_max[s : s + size], ok[s : s + size] = host
  rerank.check_initial_ranking(ok)
  # Stages 2-3: expansion sets (replicated), their weights (sharded distances).
  v_idx = np.asarray(
    rerank.expansion_set_table(jnp.asarray(rank), k1_half=k1_half, row_chunk=row_chunk)
  )
  weight_fn = images.weight_block(num_all)
  v_val = np.empty(v_idx.shape, np.float32)
  for s in starts:
    idx = mesh_arrays.global_array(v_idx[s : s + size], images.rep)
    mx = mesh_arrays.global_array(row_max[s : s + size], images.rep)
    v_val[s : s + size] = mesh_arrays.to_host(weight_fn(*rows(s), *x, idx, mx))
  return rank, row_max, v_idx, v_val


def re_ranking_features_sharded(
  q_feats,
  g_feats,
  mesh: Mesh,
  *,
  axis: str = DATA_AXIS,
  metric: str = "cosine",
  k1: int = 20,
  k2: int = 6,
  lambda_value: float = 0.3,
  row_chunk: int = rerank.DEFAULT_ROW_CHUNK,
  query_rows: int = rerank.DEFAULT_QUERY_ROWS,
  squared: bool = False,
) -> np.ndarray:
  """`rerank.re_ranking_features` with the images split over a mesh axis (module doc).

  Args:
    q_feats: [Q, D] query features; g_feats: [G, D] gallery features (finite); the
      same on every process of a multi-process mesh.
    mesh: a `jax.sharding.Mesh` with axis `axis`.
    axis: the mesh axis the images are split along.
    metric, k1, k2, lambda_value, squared: as `rerank.re_ranking_features`.
    row_chunk: images ranked per device call (stages 1 and 3).
    query_rows: query rows per Jaccard block; each block's [query_rows, G] result is
      gathered on every device.

  Returns:
    float32 np.ndarray [Q, G] re-ranked distances.

  Raises:
    EvaluationInputError: bad features, a parameter out of range, an axis the mesh
      lacks, or an image whose distances are non-finite or all <= 0.
  """
  distance_lib.check_metric(metric)
  if axis not in mesh.axis_names:
    raise inputs.EvaluationInputError(f"The mesh has axes {mesh.axis_names}, not {axis!r}.")
  q_feats, g_feats = inputs.feature_pair(q_feats, g_feats)
  rerank.check_parameters(k1, k2, lambda_value)
  num_all = q_feats.shape[0] + g_feats.shape[0]
  k1_top = min(k1 + 1, num_all)
  k1_half = min(int(np.around(k1 / 2.0)) + 1, num_all)
  k2 = min(k2, num_all)
  shards = mesh.shape[axis]
  images = _ShardedImages(mesh, axis, metric, squared)
  everything = np.concatenate([q_feats, g_feats])
  x = images.prepare(mesh_arrays.pad_rows(everything, shards), images.split)
  rank, row_max, v_idx, v_val = _weighted_neighbours(
    images, x, everything, k1_top=k1_top, k1_half=k1_half, row_chunk=row_chunk
  )
  # Stage 4: local query expansion (replicated).
  if k2 != 1:
    v_idx, v_val = rerank.local_query_expansion(
      jnp.asarray(rank[:, :k2]), jnp.asarray(v_idx), jnp.asarray(v_val), row_chunk=row_chunk
    )
    v_idx, v_val = np.asarray(v_idx), np.asarray(v_val)
  # Stage 5: Jaccard distance and blend, the gallery split along the axis.
  return _jaccard_sharded(images, q_feats, g_feats, v_idx, v_val, row_max, query_rows, lambda_value)


def _jaccard_sharded(
  images: _ShardedImages,
  q_feats: np.ndarray,
  g_feats: np.ndarray,
  v_idx: np.ndarray,
  v_val: np.ndarray,
  row_max: np.ndarray,
  query_rows: int,
  lambda_value: float,
) -> np.ndarray:
  """Stage 5 of the re-ranking: the Jaccard distances of the queries to the gallery
  (split along the mesh axis through an inverted index of its expansion sets), blended
  with the original distances. Returns float32 [Q, G] on the host."""
  nq, ng = q_feats.shape[0], g_feats.shape[0]
  num_all, shards = nq + ng, images.mesh.shape[images.axis]
  g_idx = mesh_arrays.pad_rows(v_idx[nq:], shards, fill=num_all)  # padding rows: no entries
  g_val = mesh_arrays.pad_rows(v_val[nq:], shards)
  local_nnz = (g_idx < num_all).reshape(shards, -1).sum(axis=1)
  col_count = np.bincount(g_idx[g_idx < num_all], minlength=num_all)
  g_prep = images.prepare(mesh_arrays.pad_rows(g_feats, shards), images.split)
  index = images.inverted_index(
    mesh_arrays.global_array(g_idx, images.split),
    mesh_arrays.global_array(g_val, images.split),
    num_all,
    max(1, int(local_nnz.max())),
  )
  q_rows = max(1, min(int(query_rows), nq))

  def run_block(qi, qv, first, budget):
    fn = images.final_block(budget, float(lambda_value))
    q = images.prepare(q_feats[first : first + q_rows], images.rep)
    out = fn(
      *q,
      *g_prep,
      index,
      mesh_arrays.global_array(qi, images.rep),
      mesh_arrays.global_array(qv, images.rep),
      mesh_arrays.global_array(row_max[first : first + q_rows], images.rep),
    )
    if not out.is_fully_addressable:
      out = mesh_arrays.to_host(out)
    return out[:, :ng]  # copied to the host by jaccard_in_blocks

  return rerank.jaccard_in_blocks(
    v_idx[:nq], v_val[:nq], col_count, ng, query_rows=q_rows, run_block=run_block
  )
