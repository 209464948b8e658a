"""What one evaluation computed: the input of the writers (`writers`).

`evaluator.Evaluator.run` returns an `EvalResult`; the table, metrics.json, the
figures and the TensorBoard scalars are functions of it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import numpy as np

from fsaf_jax.evaluation.eval_sets import EvalSet
from fsaf_jax.evaluation.roc import PairDistances
from fsaf_jax.evaluation.scoring import EvalFeatures, Scores
from fsaf_jax.evaluation.settings import EvalSettings


@dataclasses.dataclass(frozen=True)
class ActivationMaps:
  """The activation maps of some queries (`activation_maps`).

  Attributes:
    queries: int [B] query indices (source order).
    images: uint8 [B, H, W, 3], the network's inputs.
    maps: float32 [B, H, W] in [0, 1].
  """

  queries: np.ndarray
  images: np.ndarray
  maps: np.ndarray


@dataclasses.dataclass(frozen=True)
class EvalResult:
  """One `Evaluator.run`.

  Attributes:
    eval_set: the evaluated set (label, results folder).
    settings: the evaluation settings.
    config: the run config (recorded in metrics.json).
    config_name: name of the config (titles, metrics.json), or None.
    query_source, gallery_source: the splits' sources (the figures read images).
    step: training step of the variables (None: unknown).
    metrics: the flat metrics (`scoring.Scores.flat`).
    scores: `scoring.Scores` (RankMetrics, re-ranked distances [M, N] or None).
    features: the query / gallery features (source order).
    timing: seconds: `extract_query_s`, `extract_gallery_s`, `images_per_s`,
      `score_s` (`rerank_s`), `roc_s`; the writers add `figure_s`, `total_s`.
    started: `time.perf_counter()` at the start of the run.
    pairs: the positive / negative pair distances, or None (one kind missing).
    roc: fast-reid's TPR@FPR (`roc.tpr_at_fpr`), or None.
    activation_maps: those of the figure's queries, or None (no figure).
  """

  eval_set: EvalSet
  settings: EvalSettings
  config: ml_collections.ConfigDict
  config_name: str | None
  query_source: Any
  gallery_source: Any
  step: int | None
  metrics: dict[str, float]
  scores: Scores
  features: EvalFeatures
  timing: dict[str, float]
  started: float
  pairs: PairDistances | None = None
  roc: dict[str, float] | None = None
  activation_maps: ActivationMaps | None = None

  @property
  def title(self) -> str:
    """'<config name or dataset>[ step N]'."""
    name = self.config_name or self.eval_set.name
    return name + (f" step {self.step}" if self.step is not None else "")
