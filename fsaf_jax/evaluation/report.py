"""The metrics table (eval.py, training, `fsaf_jax.score`, the demo) and `metrics.json`.

  results = {"plain": evaluate(...), "re-ranked": evaluate(re_ranked, ...)}
  print(metrics_table(results))
  write_metrics_json(workdir / "eval" / "metrics.json", results, extra={"step": 1200})

The table gives Rank-1/5/10, mAP and mINP in percent (two decimals, as fast-reid) and
the number of valid queries (scored / total). `metrics.json` holds, per row name, the
`RankMetrics.as_dict()` values as fractions in [0, 1] (plus the full CMC), and any
`extra` fields at the top level.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from fsaf_jax.core import whole_file
from fsaf_jax.evaluation.metrics import METRIC_NAMES, RankMetrics

TABLE_RANKS = (1, 5, 10)


def _heading(name: str) -> str:
  """Column heading of a `metrics.METRIC_NAMES` entry: 'rank5' -> 'Rank-5'."""
  return f"Rank-{name[4:]}" if name.startswith("rank") else name


def metrics_table(results: Mapping[str, RankMetrics], ranks: Sequence[int] = TABLE_RANKS) -> str:
  """Plain-text table, one row per entry of `results` (e.g. 'plain', 're-ranked').

  The one table of the package: eval.py, the training loop, `fsaf_jax.score` and the
  demo's baseline comparison print it.

  Args:
    results: row name -> RankMetrics.
    ranks: CMC ranks shown (those beyond a CMC's length print as '-'), then mAP and
      mINP (`metrics.METRIC_NAMES`), in percent, and the valid queries.

  Returns:
    The table, lines joined by newlines (no trailing newline).
  """
  if not results:
    raise ValueError("No results to tabulate.")
  if any(k < 1 for k in ranks):
    raise ValueError(f"ranks must be >= 1, got {tuple(ranks)}")
  names = [f"rank{k}" for k in ranks] + [n for n in METRIC_NAMES if not n.startswith("rank")]
  name_width = max(10, *(len(name) for name in results))
  heads = [_heading(n) for n in names] + ["valid queries"]
  widths = [max(7, len(h)) for h in heads[:-1]] + [len(heads[-1])]
  lines = [
    "  ".join([f"{'':<{name_width}}"] + [f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)]),
    "  ".join(["-" * name_width] + ["-" * w for w in widths]),
  ]
  for row, m in results.items():
    values = m.scalars()
    values.update({f"rank{k}": float(m.cmc[k - 1]) for k in ranks if k <= len(m.cmc)})
    cells = [f"{100 * values[n]:.2f}" if n in values else "-" for n in names]
    cells.append(f"{m.num_valid} of {m.num_valid + m.num_skipped}")
    lines.append(
      "  ".join(
        [f"{row:<{name_width}}"] + [f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)]
      )
    )
  return "\n".join(lines)


def metrics_json(
  results: Mapping[str, RankMetrics], extra: Mapping[str, Any] | None = None
) -> dict:
  """The `metrics.json` content: {name: RankMetrics.as_dict(), ..., **extra}."""
  out: dict[str, Any] = dict(extra or {})
  for name, m in results.items():
    if name in out:
      raise ValueError(f"Result name {name!r} clashes with an extra field.")
    out[name] = m.as_dict()
  return out


def write_metrics_json(
  path: str | os.PathLike,
  results: Mapping[str, RankMetrics],
  extra: Mapping[str, Any] | None = None,
) -> epath.Path:
  """Writes `metrics_json(results, extra)` to `path` (local or e.g. gs://), creating
  parents; whole or not at all (`whole_file.write_whole`).

  Returns:
    The path written.
  """
  text = json.dumps(metrics_json(results, extra), indent=2) + "\n"
  return whole_file.write_whole(path, text)
