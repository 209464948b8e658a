"""CUHK03 classic single-shot evaluation (torchreid's `eval_cuhk03`).

The classic CUHK03 protocol (the 1,367 / 100-identity splits) reports a *single-shot*
CMC: for each query, the gallery is reduced to one randomly drawn image per identity
(among the images left after removing the query's same-pid-same-camera images), the
first positive's rank is read in that reduced list, and this is repeated 10 times and
averaged. This follows torchreid's `torchreid.metrics.rank.eval_cuhk03` (itself from
the Open-ReID / Li et al. 2014 protocol). As there, AP is computed on the full ranked
list; this module takes mAP and mINP from `metrics.evaluate` (Market protocol, same
filtering). CUHK03-NP (the new protocol, `cuhk03_np` here) uses `metrics.evaluate`
directly, not this.

Differences from torchreid, stated: draws come from a seeded `np.random.Generator`
(`seed`), not the global NumPy state, so results are reproducible; ties are broken by
gallery index as everywhere in `fsaf_jax.evaluation`; junk items (pid < 0) are dropped.

The draw for repeat r of query q picks, for every gallery identity, one item uniformly
among that identity's items (for the query's own identity: among its positives); the
rank of the drawn positive in the reduced list is then 1 + the number of drawn items of
other identities ranked before it, computed in JAX without sorting.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fsaf_jax.evaluation import inputs
from fsaf_jax.evaluation import metrics as metrics_lib

NUM_REPEATS = 10


@dataclasses.dataclass(frozen=True)
class SingleShotDraws:
  """Random single-shot galleries.

  Attributes:
    queries: int [V] indices of the queries the draws are for (those with a positive).
    chosen: int32 [V, R, I] drawn gallery index per (query, repeat, gallery identity).
    own: int32 [V] the slot in I of each query's identity.
  """

  queries: np.ndarray
  chosen: np.ndarray
  own: np.ndarray


def draw_single_shot_galleries(
  q_pids, q_camids, g_pids, g_camids, *, num_repeats: int = NUM_REPEATS, seed: int = 0
) -> SingleShotDraws:
  """Draws `num_repeats` single-shot galleries for every query that has a positive.

  Args:
    q_pids, q_camids: int [M]; g_pids, g_camids: int [N].
    num_repeats: galleries drawn per query (torchreid: 10).
    seed: seed of the `np.random.Generator`.

  Returns:
    SingleShotDraws; identities are the distinct gallery pids >= 0 in increasing order.
  """
  q_pids, g_pids, q_camids, g_camids = inputs.query_gallery_ids(q_pids, g_pids, q_camids, g_camids)
  if num_repeats < 1:
    raise inputs.EvaluationInputError(f"num_repeats must be >= 1, got {num_repeats}.")
  counts, table = metrics_lib.positive_lists(q_pids, q_camids, g_pids, g_camids)
  queries = np.nonzero(counts > 0)[0]
  real = np.nonzero(g_pids >= 0)[0]
  order = real[np.argsort(g_pids[real], kind="stable")]
  ids, first, size = np.unique(g_pids[order], return_index=True, return_counts=True)
  rng = np.random.default_rng(seed)
  u = rng.random((queries.shape[0], num_repeats, ids.shape[0]))
  chosen = order[first[None, None, :] + np.floor(u * size[None, None, :]).astype(np.int64)]
  own = np.searchsorted(ids, q_pids[queries])
  u_own = rng.random((queries.shape[0], num_repeats))
  pick = np.floor(u_own * counts[queries][:, None]).astype(np.int64)
  chosen[np.arange(queries.shape[0])[:, None], np.arange(num_repeats)[None, :], own[:, None]] = (
    table[queries[:, None], pick]
  )
  return SingleShotDraws(queries, chosen.astype(np.int32), own.astype(np.int32))


@jax.jit
def _single_shot_ranks(dist: jax.Array, chosen: jax.Array, own: jax.Array) -> jax.Array:
  """Rank of the drawn positive in each drawn single-shot gallery.

  Args:
    dist: float32 [C, N] distances of C queries.
    chosen: int32 [C, R, I] drawn gallery items.
    own: int32 [C] slot of each query's identity.

  Returns:
    int32 [C, R] 1-based ranks.
  """
  c, r, i = chosen.shape
  d = jnp.take_along_axis(dist, chosen.reshape(c, r * i), axis=1).reshape(c, r, i)
  pos = jnp.take_along_axis(chosen, own[:, None, None], axis=2)  # [C, R, 1]
  d_pos = jnp.take_along_axis(d, own[:, None, None], axis=2)
  before = (d < d_pos) | ((d == d_pos) & (chosen < pos))
  other = jnp.arange(i)[None, None, :] != own[:, None, None]
  return 1 + jnp.sum(before & other, axis=2, dtype=jnp.int32)


def single_shot_cmc(
  distmat, draws: SingleShotDraws, *, max_rank: int = 50, query_chunk: int = 256
) -> np.ndarray:
  """Per-query single-shot CMC, averaged over the repeats.

  Args:
    distmat: [M, N] distances (compared in float32).
    draws: `draw_single_shot_galleries` output.
    max_rank: CMC length.
    query_chunk: queries per device call.

  Returns:
    float64 [V, max_rank]: row v is query `draws.queries[v]`'s CMC averaged over the
    repeats.
  """
  distmat = np.asarray(distmat)
  num = draws.queries.shape[0]
  chunk = max(1, min(int(query_chunk), num))
  ranks = np.empty(draws.chosen.shape[:2], np.int64)
  finite = True
  for start in range(0, num, chunk):
    sel = np.minimum(np.arange(start, start + chunk), num - 1)
    rows = distmat[draws.queries[sel]].astype(np.float32)
    finite &= bool(np.isfinite(rows).all())
    out = np.asarray(_single_shot_ranks(rows, draws.chosen[sel], draws.own[sel]))
    ranks[start : start + chunk] = out[: min(chunk, num - start)]
  if not finite:
    raise inputs.EvaluationInputError("distmat has non-finite (NaN or inf) distances.")
  hits = ranks[:, :, None] <= np.arange(1, max_rank + 1)[None, None, :]
  return hits.mean(axis=1)


def evaluate_cuhk03(
  distmat,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  *,
  max_rank: int = 50,
  num_repeats: int = NUM_REPEATS,
  seed: int = 0,
  query_chunk: int = metrics_lib.DEFAULT_QUERY_CHUNK,
) -> metrics_lib.RankMetrics:
  """CUHK03 classic protocol: single-shot CMC (10 draws), mAP/mINP on the full list.

  Args:
    distmat: [M, N] distances.
    q_pids, g_pids, q_camids, g_camids: as `metrics.evaluate`.
    max_rank: CMC length (cut at the number of gallery identities).
    num_repeats: single-shot galleries per query (torchreid: 10).
    seed: seed of the draws.
    query_chunk: queries per device call.

  Returns:
    RankMetrics with the averaged single-shot `cmc`, and `mAP`, `mINP`, `num_valid`,
    `num_skipped` of `metrics.evaluate`.
  """
  full = metrics_lib.evaluate(
    distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank, query_chunk=query_chunk
  )
  draws = draw_single_shot_galleries(
    q_pids, q_camids, g_pids, g_camids, num_repeats=num_repeats, seed=seed
  )
  max_rank = min(max_rank, draws.chosen.shape[2])
  cmc = single_shot_cmc(distmat, draws, max_rank=max_rank, query_chunk=query_chunk)
  return dataclasses.replace(full, cmc=cmc.mean(axis=0))
