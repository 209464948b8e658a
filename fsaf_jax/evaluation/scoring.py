"""Scores query / gallery features: the one scoring function of the package.

  scores = score_features(features, settings)
  scores.metrics, scores.metrics_rerank, scores.flat()  # {'rank1': ..., 'rerank/mAP': ...}

`evaluator.Evaluator` (training, eval.py) and `python -m fsaf_jax.score` both call
`score_features`: the Market-1501 protocol (`metrics.evaluate_features`: the
`settings.metric` distance, chunked over queries, CMC cut at `settings.max_rank`), and
again after k-reciprocal re-ranking (`rerank.re_ranking_features`) when
`settings.rerank`. With `settings.shard_gallery`, both run with the images split over
the mesh's 'data' axis (`metrics.evaluate_features_sharded`,
`rerank_sharded.re_ranking_features_sharded`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import NamedTuple

import ml_collections
import numpy as np
from jax.sharding import Mesh

from fsaf_jax.core.mesh import DATA_AXIS, make_mesh
from fsaf_jax.evaluation import metrics as metrics_lib
from fsaf_jax.evaluation import rerank as rerank_lib
from fsaf_jax.evaluation import rerank_sharded
from fsaf_jax.evaluation.settings import EvalSettings

RERANK_PREFIX = "rerank/"


@dataclasses.dataclass(frozen=True)
class EvalFeatures:
  """Embeddings and labels of the query and gallery sets, in source order.

  Attributes:
    query_feats: float32 [M, C].
    gallery_feats: float32 [N, C].
    query_pids, gallery_pids: int [M], [N] (gallery pid -1 = junk, 0 = distractor).
    query_camids, gallery_camids: int [M], [N].
    query_names, gallery_names: str [M], [N] file names, or None (features from a file).
  """

  query_feats: np.ndarray
  gallery_feats: np.ndarray
  query_pids: np.ndarray
  gallery_pids: np.ndarray
  query_camids: np.ndarray
  gallery_camids: np.ndarray
  query_names: np.ndarray | None = None
  gallery_names: np.ndarray | None = None

  def ids(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(query_pids, gallery_pids, query_camids, gallery_camids): `metrics.evaluate` order."""
    return self.query_pids, self.gallery_pids, self.query_camids, self.gallery_camids


class Scores(NamedTuple):
  """What `score_features` computed.

  Attributes:
    metrics: the Market-protocol metrics of the distances.
    metrics_rerank: the same after re-ranking, or None (re-ranking off).
    reranked: float32 [M, N] re-ranked distances, or None.
    timing: seconds: `score_s` (and `rerank_s`: re-ranking and its scoring).
  """

  metrics: metrics_lib.RankMetrics
  metrics_rerank: metrics_lib.RankMetrics | None
  reranked: np.ndarray | None
  timing: dict[str, float]

  def flat(self) -> dict[str, float]:
    """{name: value} over `metrics.METRIC_NAMES` (those within the CMC), the re-ranked
    ones prefixed with `RERANK_PREFIX` ('rerank/rank1', ...)."""
    out = self.metrics.scalars()
    if self.metrics_rerank is not None:
      out.update({RERANK_PREFIX + k: v for k, v in self.metrics_rerank.scalars().items()})
    return out

  def rows(self) -> dict[str, metrics_lib.RankMetrics]:
    """Table rows: {'plain': metrics, ['re-ranked': metrics_rerank]}."""
    rows = {"plain": self.metrics}
    if self.metrics_rerank is not None:
      rows["re-ranked"] = self.metrics_rerank
    return rows


def score_features(
  features: EvalFeatures,
  settings: EvalSettings | ml_collections.ConfigDict,
  *,
  mesh: Mesh | None = None,
) -> Scores:
  """Market-protocol metrics of the features, and after re-ranking when asked for.

  Args:
    features: query / gallery features and ids (names unused).
    settings: the checked settings (`metric`, `max_rank`, `query_chunk`, `rerank`,
      `rerank_*`, `shard_gallery`), or a `config.eval` section (checked here).
    mesh: the device mesh whose 'data' axis the gallery is split along when
      `settings.shard_gallery` (default: all devices).

  Returns:
    `Scores`: `metrics_rerank` and `reranked` are None unless `settings.rerank`.

  Raises:
    errors.UserError: bad settings (a `config.eval` section).
    inputs.EvaluationInputError: bad features or ids, no query with a positive.
  """
  if not isinstance(settings, EvalSettings):
    settings = EvalSettings.from_eval_config(settings)
  ids = features.ids()
  timing = {}
  start = time.perf_counter()
  options = dict(
    metric=settings.metric, max_rank=settings.max_rank, query_chunk=settings.query_chunk
  )
  if settings.shard_gallery:
    mesh = make_mesh() if mesh is None else mesh
    metrics = metrics_lib.evaluate_features_sharded(
      features.query_feats, features.gallery_feats, *ids, mesh, axis=DATA_AXIS, **options
    )
  else:
    metrics = metrics_lib.evaluate_features(
      features.query_feats, features.gallery_feats, *ids, **options
    )
  timing["score_s"] = time.perf_counter() - start
  if not settings.rerank:
    return Scores(metrics, None, None, timing)
  start = time.perf_counter()
  if settings.shard_gallery:
    reranked = rerank_sharded.re_ranking_features_sharded(
      features.query_feats,
      features.gallery_feats,
      mesh,
      axis=DATA_AXIS,
      **settings.rerank_options(),
    )
  else:
    reranked = rerank_lib.re_ranking_features(
      features.query_feats, features.gallery_feats, **settings.rerank_options()
    )
  with warnings.catch_warnings():  # the skipped-queries warning was given once already
    warnings.simplefilter("ignore")
    metrics_rerank = metrics_lib.evaluate(
      reranked, *ids, max_rank=settings.max_rank, query_chunk=settings.query_chunk
    )
  timing["rerank_s"] = time.perf_counter() - start
  return Scores(metrics, metrics_rerank, reranked, timing)
