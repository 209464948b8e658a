r"""Scores precomputed ReID features with the Market-1501 protocol.

  python -m fsaf_jax.score FEATURES.npz [--metric=cosine|euclidean] [--rerank] \
      [--rerank_squared] [--json=OUT] [--max_rank=50]

FEATURES.npz holds `query_feats` [M, D], `gallery_feats` [N, D], `query_pids` [M],
`gallery_pids` [N], `query_camids` [M], `gallery_camids` [N] (as written by
`python -m fsaf_jax.extract`, or by any other code: features from fast-reid /
torchreid models score the same way). Prints the metrics table (Rank-1/5/10, mAP,
mINP, valid queries), with a second row after k-reciprocal re-ranking with
`--rerank`; `--json` writes the same numbers (fractions, full CMC) as JSON.
Re-ranking uses the distances as given (BoT's convention); `--rerank_squared` squares
them first, as fast-reid's and torchreid's `re_ranking` do, which reproduces their
re-ranked figures (`rerank.re_ranking`'s `squared`).

Bad input (missing key, mismatched lengths, NaN features, empty sets, no query with a
positive) ends with a one-line error naming the array and its shape, exit status 1.
Queries without a positive in the gallery are skipped with a warning giving the count.
"""

from __future__ import annotations

import sys
import warnings
import zipfile
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags

from fsaf_jax import host_allocator
from fsaf_jax.evaluation import distance, inputs, metrics, report
from fsaf_jax.evaluation import rerank as rerank_lib

FEATURE_KEYS = ("query_feats", "gallery_feats")
ID_KEYS = ("query_pids", "gallery_pids", "query_camids", "gallery_camids")
REQUIRED_KEYS = FEATURE_KEYS + ID_KEYS


def load_features(path: str) -> dict[str, np.ndarray]:
  """Reads and checks a features npz.

  Returns:
    The six arrays (features float32 [M, D] / [N, D], ids int64), validated.

  Raises:
    EvaluationInputError: unreadable file, missing keys, wrong shapes or lengths,
      non-finite features, empty sets.
  """
  try:
    with np.load(path, allow_pickle=False) as npz:
      present = set(npz.files)
      missing = [k for k in REQUIRED_KEYS if k not in present]
      if missing:
        raise inputs.EvaluationInputError(
          f"{path}: missing key(s) {', '.join(missing)}; the file has "
          f"{', '.join(sorted(present)) or 'no arrays'}. Expected {', '.join(REQUIRED_KEYS)}."
        )
      arrays = {k: npz[k] for k in REQUIRED_KEYS}
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    if isinstance(e, inputs.EvaluationInputError):
      raise
    raise inputs.EvaluationInputError(f"Cannot read {path} as a .npz file: {e}") from e
  return check_features(arrays, where=path)


def check_features(
  arrays: Mapping[str, np.ndarray], where: str = "features"
) -> dict[str, np.ndarray]:
  """Validates the six arrays against each other (see `load_features`)."""
  out = {}
  for k in FEATURE_KEYS:
    try:
      out[k] = inputs.feature_matrix(k, arrays[k])
    except inputs.EvaluationInputError as e:
      raise inputs.EvaluationInputError(f"{where}: {e}") from None
  if out["query_feats"].shape[1] != out["gallery_feats"].shape[1]:
    raise inputs.EvaluationInputError(
      f"{where}: query_feats {out['query_feats'].shape} and gallery_feats "
      f"{out['gallery_feats'].shape} have different feature dimensions."
    )
  for k in ID_KEYS:
    side = "query" if k.startswith("query") else "gallery"
    length = out[f"{side}_feats"].shape[0]
    try:
      ids = inputs.id_vector(k, arrays[k])
    except inputs.EvaluationInputError as e:
      raise inputs.EvaluationInputError(f"{where}: {e}") from None
    if ids.shape[0] != length:
      raise inputs.EvaluationInputError(
        f"{where}: {k} has shape {ids.shape} but {side}_feats has {length} rows "
        f"(shape {out[f'{side}_feats'].shape})."
      )
    out[k] = ids
  return out


def score_features(
  arrays: Mapping[str, np.ndarray],
  *,
  metric: str = "cosine",
  rerank: bool = False,
  max_rank: int = 50,
  k1: int = 20,
  k2: int = 6,
  lambda_value: float = 0.3,
  query_chunk: int = metrics.DEFAULT_QUERY_CHUNK,
  rerank_squared: bool = False,
) -> dict[str, metrics.RankMetrics]:
  """Metrics of checked feature arrays: {'plain': ..., ['re-ranked': ...]}."""
  ids = [arrays[k] for k in ("query_pids", "gallery_pids", "query_camids", "gallery_camids")]
  qf, gf = arrays["query_feats"], arrays["gallery_feats"]
  results = {
    "plain": metrics.evaluate_features(
      qf, gf, *ids, metric=metric, max_rank=max_rank, query_chunk=query_chunk
    )
  }
  if rerank:
    dist = rerank_lib.re_ranking_features(
      qf, gf, metric=metric, k1=k1, k2=k2, lambda_value=lambda_value, squared=rerank_squared
    )
    with warnings.catch_warnings():  # the skipped-queries warning was given once already
      warnings.simplefilter("ignore")
      results["re-ranked"] = metrics.evaluate(
        dist, *ids, max_rank=max_rank, query_chunk=query_chunk
      )
  return results


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("Expected exactly one argument: FEATURES.npz")
  host_allocator.configure()  # CPU: keep XLA's buffers mapped, as eval.py does
  path = argv[1]
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      arrays = load_features(path)
      results = score_features(
        arrays,
        metric=_METRIC.value,
        rerank=_RERANK.value,
        max_rank=_MAX_RANK.value,
        k1=_K1.value,
        k2=_K2.value,
        lambda_value=_LAMBDA.value,
        query_chunk=_QUERY_CHUNK.value,
        rerank_squared=_RERANK_SQUARED.value,
      )
  except inputs.EvaluationInputError as e:
    sys.exit(f"score: error: {e}")
  for w in caught:
    if issubclass(w.category, UserWarning):
      print(f"score: warning: {w.message}", file=sys.stderr)
  q, g = arrays["query_feats"].shape, arrays["gallery_feats"].shape
  print(
    f"{path}: {q[0]} queries, {g[0]} gallery images, {q[1]}-d features, {_METRIC.value} distance"
  )
  print(report.metrics_table(results))
  if _JSON.value:
    extra = {"features": str(path), "metric": _METRIC.value, "max_rank": _MAX_RANK.value}
    if _RERANK.value:
      extra["rerank"] = {
        "k1": _K1.value,
        "k2": _K2.value,
        "lambda": _LAMBDA.value,
        "squared": _RERANK_SQUARED.value,
      }
    written = report.write_metrics_json(_JSON.value, results, extra=extra)
    print(f"Wrote {written}")


if __name__ == "__main__":
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _METRIC = flags.DEFINE_enum("metric", "cosine", distance.METRICS, "Distance between features.")
  _RERANK = flags.DEFINE_bool("rerank", False, "Also report k-reciprocal re-ranking.")
  _RERANK_SQUARED = flags.DEFINE_bool(
    "rerank_squared",
    False,
    "Square the distances before re-ranking, as fast-reid's / torchreid's re_ranking do "
    "(reproduces their figures); default: as given, as BoT's.",
  )
  _JSON = flags.DEFINE_string("json", None, "Write the metrics as JSON to this file.")
  _MAX_RANK = flags.DEFINE_integer("max_rank", 50, "CMC length.")
  _K1 = flags.DEFINE_integer("k1", 20, "Re-ranking k1.")
  _K2 = flags.DEFINE_integer("k2", 6, "Re-ranking k2.")
  _LAMBDA = flags.DEFINE_float("lambda_value", 0.3, "Re-ranking weight of the original distance.")
  _QUERY_CHUNK = flags.DEFINE_integer(
    "query_chunk", metrics.DEFAULT_QUERY_CHUNK, "Queries scored per device call (bounds memory)."
  )
  app.run(main)
