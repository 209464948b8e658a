"""What a trained network is compared with: the same network untrained, colour histograms.

`compare_baselines` scores, on the run's query / gallery splits, the network as
initialised (same architecture and init, no training step) and, when the dataset's
Market-1501 folder is at hand (the embedded synthetic data), the colour-histogram
baseline (`fsaf_jax.demo.color_histogram`), with the run's `Evaluator`. It prints the
metrics table (`report.metrics_table`) of both beside the trained network's and writes
`WORKDIR/eval/step_<N>/baselines.json` (beside the trained step's metrics.json).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from etils import epath

from fsaf_jax.core import whole_file
from fsaf_jax.demo import color_histogram
from fsaf_jax.evaluation import report, result_dirs, writers
from fsaf_jax.evaluation.evaluator import EvalResult, Evaluator

BASELINES_FILE = "baselines.json"


def compare_baselines(
  evaluator: Evaluator,
  trained: EvalResult,
  init_variables: Mapping[str, Any],
  *,
  outdir: epath.PathLike | None,
) -> dict[str, Any]:
  """Scores the untrained network and the colour-histogram baseline beside the trained one.

  Args:
    evaluator: the run's (first) evaluator; its compiled extractor is reused for the
      untrained variables.
    trained: its result for the trained network.
    init_variables: the network's variables at initialisation.
    outdir: the work dir: writes `baselines.json` beside the trained network's
      metrics.json (`writers.result_dir`: `OUTDIR/eval/step_<N>/`, N the trained step,
      and the set's subfolder when `config.eval.datasets` lists sets) and prints the
      table; None: nothing written or printed.

  Returns:
    `{'trained', 'untrained', 'colour_histogram' (None without a Market folder)}`, each
    `RankMetrics.scalars()` fractions, and `'table'` (`report.metrics_table`).
  """
  manual_dir = evaluator.eval_set.manual_dir or ""
  untrained = evaluator.run(init_variables, step=0, figures=False).scores.metrics
  histogram = None
  try:
    root = color_histogram.market_root(manual_dir or ".")
  except FileNotFoundError:
    logging.info("No Market-1501 folder in %r: no colour-histogram baseline", manual_dir)
  else:
    histogram = color_histogram.run_baseline(root)
  rows = {
    f"FSAF trained (step {trained.step})": trained.scores.metrics,
    "FSAF untrained (init only)": untrained,
  }
  if histogram is not None:
    rows["colour histogram (HSV)"] = histogram
  table = report.metrics_table(rows)
  result = {
    "config_name": evaluator.config_name,
    "dataset": evaluator.dataset,
    "trained": trained.scores.metrics.scalars(),
    "untrained": untrained.scalars(),
    "colour_histogram": None if histogram is None else histogram.scalars(),
    "table": table,
  }
  if outdir is not None:
    path = writers.result_dir(trained, outdir) / BASELINES_FILE
    with result_dirs.reporting_write_errors(path.parent):
      whole_file.write_whole(path, json.dumps(result, indent=2) + "\n")
    where = manual_dir or evaluator.data_dir
    print(f"\nQuery / gallery of {evaluator.dataset} ({where}):")
    print(table, flush=True)
    logging.info("Wrote %s", os.fspath(path))
    sys.stdout.flush()
  return result
