"""Tests of the metrics table and metrics.json."""

import json

import numpy as np
import pytest

from fsaf_jax.evaluation import report
from fsaf_jax.evaluation.metrics import RankMetrics


def _metrics(rank1, m_ap, skipped=0, length=50):
  cmc = np.clip(np.linspace(rank1, rank1 + 0.3, length), 0, 1)
  return RankMetrics(cmc=cmc, mAP=m_ap, mINP=m_ap / 2, num_valid=100 - skipped, num_skipped=skipped)


def test_table_rows_and_values():
  plain, rr = _metrics(0.9123, 0.8), _metrics(0.95, 0.9, skipped=3)
  table = report.metrics_table({"plain": plain, "re-ranked": rr})
  lines = table.split("\n")
  assert len(lines) == 4
  assert lines[0].split() == ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "valid", "queries"]
  cells = lines[2].split()
  assert cells[0] == "plain"
  assert cells[1:4] == [f"{100 * plain.cmc[k - 1]:.2f}" for k in (1, 5, 10)]
  assert cells[1] == "91.23" and cells[4:6] == ["80.00", "40.00"]
  assert lines[2].endswith("100 of 100") and lines[3].endswith("97 of 100")
  # Columns line up.
  assert len({len(line) for line in lines}) == 1


def test_table_short_cmc():
  table = report.metrics_table({"tiny gallery": _metrics(0.5, 0.5, length=3)})
  assert table.split("\n")[2].split()[3:5] == ["-", "-"]  # Rank-5, Rank-10 unavailable


def test_json_roundtrip(tmp_path):
  results = {"plain": _metrics(0.9, 0.8), "re-ranked": _metrics(0.95, 0.9, skipped=2)}
  path = report.write_metrics_json(tmp_path / "eval" / "metrics.json", results, extra={"step": 7})
  data = json.loads(path.read_text())
  assert data["step"] == 7
  assert data["plain"]["rank1"] == pytest.approx(0.9) and data["plain"]["mAP"] == 0.8
  assert data["re-ranked"]["num_skipped"] == 2 and len(data["re-ranked"]["cmc"]) == 50
  with pytest.raises(ValueError, match="clashes"):
    report.metrics_json(results, extra={"plain": 1})
