"""What a trained network is compared with: the same network untrained, colour histograms.

`compare_baselines` scores, on the run's query / gallery splits, the network as
initialised (same architecture and init, no training step) and, when the dataset's
Market-1501 folder is at hand (the embedded synthetic data), the colour-histogram
baseline (`fsaf_jax.demo.color_histogram`). It prints a table of Rank-1 /
mAP / mINP beside the trained network's and writes `WORKDIR/eval/step_<N>/baselines.json`
(beside the trained step's metrics.json).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath
from jax.sharding import Mesh

from fsaf_jax.demo import color_histogram
from fsaf_jax.evaluation import evaluator, result_dirs

BASELINES_FILE = "baselines.json"


def _row(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(metrics[k]) for k in ("rank1", "rank5", "mAP", "mINP") if k in metrics}


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
  """Rows `name -> {rank1, mAP, mINP, ...}` (fractions) as a table in percent."""
  width = max(len(n) for n in rows) + 2
  lines = [f"{'':<{width}}{'Rank-1':>8}{'Rank-5':>8}{'mAP':>8}{'mINP':>8}"]
  for name, m in rows.items():
    cells = "".join(
      f"{100 * m[k]:>8.1f}" if k in m else f"{'-':>8}" for k in ("rank1", "rank5", "mAP", "mINP")
    )
    lines.append(f"{name:<{width}}{cells}")
  return "\n".join(lines)


def compare_baselines(
  config: ml_collections.ConfigDict,
  trained: Mapping[str, Any],
  init_variables: Mapping[str, Any],
  *,
  outdir: epath.PathLike | None,
  mesh: Mesh | None = None,
  config_name: str | None = None,
) -> dict[str, Any]:
  """Scores the untrained network and the colour-histogram baseline beside `trained`.

  Args:
    config: the resolved run config (absolute data paths).
    trained: the trained network's `evaluator.evaluate_model` result.
    init_variables: the network's variables at initialisation.
    outdir: the work dir: writes `OUTDIR/eval/step_<N>/baselines.json` (N: the trained
      step); None: nothing written.
    mesh: the device mesh.
    config_name: recorded in the JSON.

  Returns:
    `{'trained', 'untrained', 'colour_histogram' (None without a Market folder)}`, each
    `{rank1, rank5, mAP, mINP}` fractions, and `'table'` (the printed text).
  """
  untrained = evaluator.evaluate_model(
    config,
    init_variables,
    outdir=None,
    mesh=mesh,
    data_dir=config.input.data_dir,
    write_figure=False,
    step=0,
    config_name=f"{config_name or ''} untrained".strip(),
  )
  histogram = None
  try:
    root = color_histogram.market_root(config.input.manual_dir or ".")
  except FileNotFoundError:
    logging.info(
      "No Market-1501 folder in %r: no colour-histogram baseline", config.input.manual_dir
    )
  else:
    histogram = _row(color_histogram.run_baseline(root).as_dict())
  rows = {
    f"FSAF trained (step {trained.get('step')})": _row(trained["metrics"]),
    "FSAF untrained (init only)": _row(untrained["metrics"]),
  }
  if histogram is not None:
    rows["colour histogram (HSV)"] = histogram
  table = format_table(rows)
  result = {
    "config_name": config_name,
    "dataset": config.input.dataset,
    "trained": _row(trained["metrics"]),
    "untrained": _row(untrained["metrics"]),
    "colour_histogram": histogram,
    "table": table,
  }
  if outdir is not None:
    path = result_dirs.step_dir(outdir, trained.get("step")) / BASELINES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    where = config.input.manual_dir or config.input.data_dir
    print(f"\nQuery / gallery of {config.input.dataset} ({where}):")
    print(table, flush=True)
    logging.info("Wrote %s", os.fspath(path))
    sys.stdout.flush()
  return result
