"""Summary command: counts (checked against per-layer arithmetic) and output shapes."""

import os
import pathlib
import sys

import pytest

from configs import baseline, fsaf_market
from fsaf_jax.models.summary import summarize
from tests.reference import ceiling
from tests.reference.fsaf_param_count import fsaf_param_count

REPO = pathlib.Path(__file__).resolve().parents[3]


def _parse(text):
  """{row label: last field} for the count rows, {output key: shape string} for outputs."""
  counts, shapes = {}, {}
  for line in text.splitlines():
    label, _, value = line.strip().rpartition(" ")
    if value.replace(",", "").isdigit():
      counts[label.strip()] = int(value.replace(",", ""))
    elif line.startswith("  ") and "(" in line:
      key, rest = line.split(maxsplit=1)
      shapes[key] = rest[: rest.index(")") + 1]
  return counts, shapes


@pytest.mark.parametrize(
  "get_config, arithmetic, dim",
  [
    (baseline.get_config, dict(mhsa_stages=(), eca_placement="none", fusion="none"), 2048),
    (fsaf_market.get_config, {}, 3584),
  ],
)
def test_summary_prints_counts_and_shapes(get_config, arithmetic, dim):
  config = get_config()
  config.model.num_classes = 751
  counts, shapes = _parse(summarize(config))
  assert counts["TOTAL params"] == fsaf_param_count(num_classes=751, **arithmetic)
  assert counts["head/classifier"] == dim * 751
  assert counts["backbone/conv1"] == 7 * 7 * 3 * 64
  assert counts["backbone (total)"] + counts["head (total)"] == counts["TOTAL params"]
  assert shapes["stem"] == "(1, 64, 32, 64)"
  assert shapes["conv5"] == "(1, 8, 4, 2048)"
  assert shapes["fused"] == f"(1, 8, 4, {dim})"
  assert shapes["logits"] == "(1, 751)"


def test_summary_needs_num_classes():
  config = fsaf_market.get_config()
  with pytest.raises(ValueError, match="num_classes=751"):
    summarize(config)


def test_cli_runs_on_tiny():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  result = ceiling.run(
    [
      sys.executable,
      "-m",
      "fsaf_jax.models.summary",
      "--config=configs/tiny.py",
      "--config.model.num_classes=8",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    ceiling=ceiling.SHORT,
    check=False,
  )
  assert result.returncode == 0, result.stderr
  assert "TOTAL params" in result.stdout
  assert "fused" in result.stdout and "(1, 2, 1, 448)" in result.stdout
