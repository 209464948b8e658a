"""The evaluation settings of a run config, checked all at once.

  settings = EvalSettings.from_config(config)  # errors.UserError on any bad field

`config.eval.*` and `config.input.eval_batch_size` (`configs/base.py`) are read and
checked here, once, when an `evaluator.Evaluator` is built: a typo in
`config.eval.metric` stops the run before its first training step, not at its first
evaluation. Every error names the field, the value given and the values allowed.
`fsaf_jax.score` builds the scoring part directly from its flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any

import ml_collections

from data_pipelines import errors
from fsaf_jax.evaluation import distance, eval_sets, metrics

# The fields of `config.eval` (configs/base.py); any other field is refused.
EVAL_FIELDS = (
  "metric",
  "flip",
  "max_rank",
  "query_chunk",
  "shard_gallery",
  "rerank",
  "rerank_k1",
  "rerank_k2",
  "rerank_lambda",
  "rerank_squared",
  "num_figure_queries",
  "datasets",
)


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """Checked evaluation settings (defaults: `configs/base.py`'s, except `max_rank`).

  Attributes:
    metric: feature distance, one of `distance.METRICS`.
    max_rank: CMC length (>= 1; cut at the gallery size by the metrics).
    query_chunk: queries scored per device call (>= 1).
    shard_gallery: split the gallery (re-ranking: all images) over the mesh's devices.
    rerank: also score after k-reciprocal re-ranking.
    rerank_k1, rerank_k2: re-ranking neighbourhood sizes (>= 1).
    rerank_lambda: weight of the original distance, in [0, 1].
    rerank_squared: square the distances before re-ranking (fast-reid's convention).
    flip: flip-averaged embeddings.
    num_figure_queries: rows of the ranked-list figure (>= 0; 0: no figure).
    batch_size: requested host batch size of the extractor (>= 1).
    datasets: the evaluation sets (`eval_sets`; empty: the training set).
  """

  metric: str = "cosine"
  max_rank: int = 50
  query_chunk: int = metrics.DEFAULT_QUERY_CHUNK
  shard_gallery: bool = False
  rerank: bool = False
  rerank_k1: int = 20
  rerank_k2: int = 6
  rerank_lambda: float = 0.3
  rerank_squared: bool = False
  flip: bool = False
  num_figure_queries: int = 8
  batch_size: int = 128
  datasets: tuple[str, ...] = ()

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> EvalSettings:
    """`config.eval.*` and `config.input.eval_batch_size`, checked.

    Raises:
      errors.UserError: a missing, unknown or out-of-range field (named, with its value
        and the values allowed).
    """
    if "eval" not in config:
      raise errors.UserError("the config has no `eval` section (see configs/base.py)")
    return cls.from_eval_config(
      config.eval, batch_size=_field(config.input, "eval_batch_size", "config.input")
    )

  @classmethod
  def from_eval_config(
    cls, eval_config: ml_collections.ConfigDict, *, batch_size: Any = 128
  ) -> EvalSettings:
    """`config.eval` alone (with the extractor's `batch_size`), checked as `from_config`."""
    unknown = sorted(set(eval_config) - set(EVAL_FIELDS))
    if unknown:
      near = difflib.get_close_matches(unknown[0], EVAL_FIELDS, n=1)
      raise errors.UserError(
        f"config.eval.{unknown[0]} is not an evaluation setting; the fields are "
        f"{', '.join(EVAL_FIELDS)}",
        hint=f"did you mean config.eval.{near[0]}?" if near else None,
      )
    get = lambda name: _field(eval_config, name, "config.eval")  # noqa: E731
    metric = get("metric")
    if metric not in distance.METRICS:
      raise errors.UserError(
        f"config.eval.metric={metric!r}: must be one of {', '.join(map(repr, distance.METRICS))}"
      )
    return cls(
      metric=metric,
      max_rank=_integer(get("max_rank"), "config.eval.max_rank", minimum=1),
      query_chunk=_integer(get("query_chunk"), "config.eval.query_chunk", minimum=1),
      shard_gallery=_boolean(get("shard_gallery"), "config.eval.shard_gallery"),
      rerank=_boolean(get("rerank"), "config.eval.rerank"),
      rerank_k1=_integer(get("rerank_k1"), "config.eval.rerank_k1", minimum=1),
      rerank_k2=_integer(get("rerank_k2"), "config.eval.rerank_k2", minimum=1),
      rerank_lambda=_fraction(get("rerank_lambda"), "config.eval.rerank_lambda"),
      rerank_squared=_boolean(get("rerank_squared"), "config.eval.rerank_squared"),
      flip=_boolean(get("flip"), "config.eval.flip"),
      num_figure_queries=_integer(
        get("num_figure_queries"), "config.eval.num_figure_queries", minimum=0
      ),
      batch_size=_integer(batch_size, "config.input.eval_batch_size", minimum=1),
      datasets=eval_sets.check_entries(eval_config.get("datasets", ())),
    )

  def rerank_options(self) -> dict[str, Any]:
    """The keyword arguments of `rerank.re_ranking_features` these settings give."""
    return {
      "metric": self.metric,
      "k1": self.rerank_k1,
      "k2": self.rerank_k2,
      "lambda_value": self.rerank_lambda,
      "squared": self.rerank_squared,
    }

  def as_json(self) -> dict[str, Any]:
    """The settings recorded in metrics.json (`eval`): distance, flip and re-ranking."""
    return {
      "metric": self.metric,
      "flip": self.flip,
      "max_rank": self.max_rank,
      "shard_gallery": self.shard_gallery,
      "rerank": self.rerank,
      "rerank_k1": self.rerank_k1,
      "rerank_k2": self.rerank_k2,
      "rerank_lambda": self.rerank_lambda,
      "rerank_squared": self.rerank_squared,
    }


def _field(section: ml_collections.ConfigDict, name: str, where: str) -> Any:
  if name not in section:
    raise errors.UserError(f"{where}.{name} is missing (see configs/base.py)")
  return section[name]


def _integer(value: Any, name: str, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
    raise errors.UserError(f"{name}={value!r}: must be an integer >= {minimum}")
  return int(value)


def _boolean(value: Any, name: str) -> bool:
  if not isinstance(value, bool):
    raise errors.UserError(f"{name}={value!r}: must be True or False")
  return value


def _fraction(value: Any, name: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
    raise errors.UserError(f"{name}={value!r}: must be a number in [0, 1]")
  return float(value)
