"""The writers of evaluation results: functions of `result.EvalResult`s.

  writers.report(results, workdir)      # each set's table printed, its files written
  writers.scalars(results)              # {'rank1': ..., } for TensorBoard

Each set's results go to `OUTDIR/eval/step_<N>/` (the single default set: the training
set when `config.eval.datasets` is empty) or `OUTDIR/eval/step_<N>/<label>/` (each set
of `config.eval.datasets`), process 0 only:

- `metrics.json`: `metrics`, `metrics_rerank` (`RankMetrics.as_dict()` fractions, or
  None), `roc` (fast-reid's TPR@FPR=1e-04/1e-03/1e-02, `roc`), the dataset, label,
  counts, eval settings, `timing` (seconds), the paths written and the config;
- `ranked_list.png`: the queries' top-10 (`figure`), ranked by the re-ranked distances
  when re-ranking is on;
- `distances.png`, `roc.png`: the positive / negative pair distance histograms and the
  ROC (`diagnostic_figures`);
- `activation_maps.png`: the ranked-list figure's queries and their activation maps.

`OUTDIR/eval/latest` names the newest step's folder (`result_dirs`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import logging
from etils import epath

from fsaf_jax.evaluation import diagnostic_figures, result_dirs
from fsaf_jax.evaluation import figure as figure_lib
from fsaf_jax.evaluation import report as report_lib
from fsaf_jax.evaluation.result import EvalResult

METRICS_FILE = "metrics.json"
FIGURE_FILE = "ranked_list.png"
DISTANCES_FILE = "distances.png"
ROC_FILE = "roc.png"
ACTIVATION_FILE = "activation_maps.png"


def result_dir(result: EvalResult, outdir: epath.PathLike) -> epath.Path:
  """`OUTDIR/eval/step_<N>[/<label>]`: where `result`'s files go (not created)."""
  folder = result_dirs.step_dir(outdir, result.step)
  return folder if result.eval_set.folder is None else folder / result.eval_set.folder


def print_table(result: EvalResult) -> None:
  """Prints the metrics table of `result` on process 0, titled with the set."""
  if jax.process_index() == 0:
    table = report_lib.metrics_table(result.scores.rows())
    print(f"{result.title}: {result.eval_set.label}, {result.settings.metric} distance\n{table}")
    sys.stdout.flush()


def scalars(results: Sequence[EvalResult]) -> dict[str, float]:
  """TensorBoard scalars: each result's flat metrics and TPR@FPR, prefixed '<label>/'
  unless it is the single default set."""
  out = {}
  for result in results:
    prefix = "" if result.eval_set.folder is None else result.eval_set.label + "/"
    values = {**result.metrics, **(result.roc or {})}
    out.update({prefix + name: float(value) for name, value in values.items()})
  return out


def _figures(result: EvalResult, folder: epath.Path) -> dict[str, str]:
  """Draws the ranked-list and diagnostic figures into `folder`; {name: path}."""
  settings, features, scores = result.settings, result.features, result.scores
  paths = {}
  ranked = " (re-ranked)" if scores.reranked is not None else ""
  if settings.num_figure_queries > 0:
    drawn = figure_lib.write_ranked_list_figure(
      folder / FIGURE_FILE,
      features,
      result.query_source,
      result.gallery_source,
      metric=settings.metric,
      num_queries=settings.num_figure_queries,
      reranked=scores.reranked,
      title=result.title + ranked,
    )
    if drawn:
      paths["ranked_list"] = os.fspath(folder / FIGURE_FILE)
  if result.pairs is not None:
    diagnostic_figures.write_distance_figure(
      folder / DISTANCES_FILE, result.pairs, f"{result.title}: pair distances{ranked}"
    )
    diagnostic_figures.write_roc_figure(
      folder / ROC_FILE, result.pairs, result.roc, f"{result.title}: ROC{ranked}"
    )
    paths["distances"] = os.fspath(folder / DISTANCES_FILE)
    paths["roc"] = os.fspath(folder / ROC_FILE)
  maps = result.activation_maps
  if maps is not None:
    labels = [
      f"c{int(features.query_camids[q]) + 1} id {int(features.query_pids[q])}" for q in maps.queries
    ]
    diagnostic_figures.write_activation_figure(
      folder / ACTIVATION_FILE,
      maps.images,
      maps.maps,
      labels,
      f"{result.title}: activation maps (conv5)",
    )
    paths["activation_maps"] = os.fspath(folder / ACTIVATION_FILE)
  return paths


def write_result(
  result: EvalResult,
  outdir: epath.PathLike | None,
  *,
  write_figure: bool = True,
  checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
  """Writes `result`'s metrics.json and figures (module doc) into `result_dir`.

  Args:
    result: a `run`'s result.
    outdir: the work dir (or any output dir); None: write nothing.
    write_figure: draw the figures (the ranked list: `config.eval.num_figure_queries`
      rows, 0: none).
    checkpoint: path the variables were restored from, recorded in metrics.json.

  Returns:
    The metrics.json content: `metrics` (`RankMetrics.as_dict()`: rank1/5/10/20, mAP,
    mINP, num_valid, num_skipped, cmc), `metrics_rerank` (same, or None), `roc`, the
    dataset, counts (`num_query`, `num_gallery`, `num_valid_queries`), eval settings,
    `timing` (seconds) and the output paths (None when not written: `metrics_path`,
    `figure_path` the ranked list, `figure_paths` every figure by name).
  """
  features, scores, timing = result.features, result.scores, dict(result.timing)
  scored = {"metrics": scores.metrics}
  if scores.metrics_rerank is not None:
    scored["metrics_rerank"] = scores.metrics_rerank
  extra: dict[str, Any] = {
    "config_name": result.config_name,
    "dataset": result.eval_set.name,
    "label": result.eval_set.label,
    "data_dir": result.eval_set.data_dir,
    "step": result.step,
    "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
    "num_query": len(features.query_pids),
    "num_gallery": len(features.gallery_pids),
    "num_valid_queries": scores.metrics.num_valid,
    "feature_dim": int(features.query_feats.shape[1]),
    "roc": result.roc,
    "eval": result.settings.as_json(),
    "timing": timing,
    "metrics_path": None,
    "figure_path": None,
    "figure_paths": {},
    "config": json.loads(result.config.to_json_best_effort()),
  }
  if scores.metrics_rerank is None:
    extra["metrics_rerank"] = None

  if outdir is not None and jax.process_index() == 0:
    folder = result_dir(result, outdir)
    with result_dirs.reporting_write_errors(folder):
      folder.mkdir(parents=True, exist_ok=True)
      if write_figure:
        start = time.perf_counter()
        extra["figure_paths"] = _figures(result, folder)
        extra["figure_path"] = extra["figure_paths"].get("ranked_list")
        timing["figure_s"] = time.perf_counter() - start
      metrics_path = folder / METRICS_FILE
      extra["metrics_path"] = os.fspath(metrics_path)
      timing["total_s"] = time.perf_counter() - result.started
      report_lib.write_metrics_json(metrics_path, scored, extra)
      logging.info("Wrote %s", metrics_path)
  else:
    timing["total_s"] = time.perf_counter() - result.started
  return report_lib.metrics_json(scored, extra)


def report(
  results: Sequence[EvalResult],
  outdir: epath.PathLike | None,
  *,
  write_figure: bool = True,
  checkpoint: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
  """Prints each result's table and writes its files (`write_result`), then points
  `OUTDIR/eval/latest` at the step.

  Returns:
    The metrics.json contents, in order.
  """
  written = []
  for result in results:
    print_table(result)
    written.append(write_result(result, outdir, write_figure=write_figure, checkpoint=checkpoint))
  if outdir is not None and jax.process_index() == 0 and results:
    step = results[0].step
    with result_dirs.reporting_write_errors(result_dirs.step_dir(outdir, step)):
      result_dirs.update_latest(outdir, step)
  return written
