"""Tests of eval.py / `evaluator.evaluate_checkpoint`: checkpoints written by
`fsaf_jax.training.checkpoint` on a tiny Market-1501 tree (real builder), tiny model.

The restored network must score exactly what the in-memory variables it was saved
from score (`evaluator.evaluate_model` on them, itself checked against NumPy
references in tests/fsaf_jax/evaluation/test_evaluator.py).
"""

import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.evaluation import evaluator
from tests.reference import ceiling, saved_run, tiny_market
from tests.reference.console_lines import third_party_lines

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_RANK = 10
STEPS = (3, 7)

# The subprocess shares the test session's persistent compilation cache.
_JAX_CACHE_ENV = {
  "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}

pytestmark = pytest.mark.filterwarnings("ignore:.*queries have no positive:UserWarning")


def cli_config():
  """What `--config=configs/tiny.py` plus the test's overrides gives eval.py."""
  config = tiny.get_config()
  config.input.data_dir = ""  # the checkpoint's
  config.eval.max_rank = MAX_RANK
  config.eval.num_figure_queries = 3
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A work dir with checkpoints at STEPS (different weights), and their variables."""
  tmp = tmp_path_factory.mktemp("eval_cli")
  data_dir = tiny_market.build(tmp)
  config = saved_run.run_config(data_dir, MAX_RANK)
  workdir = tmp / "workdir"
  saved = saved_run.save_run(workdir, config, STEPS)
  return workdir, data_dir, config, saved


@pytest.fixture(scope="module")
def expected(run):
  """evaluate_model on the in-memory variables of each checkpoint."""
  _, data_dir, config, saved = run
  return {
    step: evaluator.evaluate_model(config, saved[step], outdir=None, write_figure=False)
    for step in STEPS
  }


def assert_same_metrics(got, want):
  np.testing.assert_allclose(got["cmc"], want["cmc"], atol=1e-6)
  np.testing.assert_allclose([got["mAP"], got["mINP"]], [want["mAP"], want["mINP"]], atol=1e-6)
  assert (got["num_valid"], got["num_skipped"]) == (want["num_valid"], want["num_skipped"])


def test_checkpoints_score_differently(expected):
  # Otherwise the step-selection tests below could not tell the checkpoints apart.
  a, b = (expected[s]["metrics"] for s in STEPS)
  assert (a["mAP"], a["mINP"]) != (b["mAP"], b["mINP"])


def test_latest_checkpoint_of_workdir(run, expected, tmp_path):
  workdir, _, _, _ = run
  result = evaluator.evaluate_checkpoint(cli_config(), workdir=workdir, outdir=tmp_path)
  assert result["step"] == STEPS[-1]
  assert result["checkpoint"] == str(workdir / "checkpoints" / str(STEPS[-1]))
  assert_same_metrics(result["metrics"], expected[STEPS[-1]]["metrics"])
  out = tmp_path / "eval" / f"step_{STEPS[-1]}"
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["step"] == STEPS[-1] and saved["metrics"] == result["metrics"]
  assert (out / "ranked_list.png").stat().st_size > 0
  assert (tmp_path / "eval" / "latest").read_text().strip() == f"step_{STEPS[-1]}"


def test_checkpoint_flag_selects_the_step(run, expected):
  workdir, _, _, _ = run
  path = workdir / "checkpoints" / str(STEPS[0])
  result = evaluator.evaluate_checkpoint(cli_config(), checkpoint=path, write_figure=False)
  assert result["step"] == STEPS[0] and result["checkpoint"] == str(path)
  assert_same_metrics(result["metrics"], expected[STEPS[0]]["metrics"])
  # Default output: the work dir holding the checkpoint, in that step's folder.
  assert result["metrics_path"] == str(workdir / "eval" / f"step_{STEPS[0]}" / "metrics.json")


def test_missing_checkpoint_names_the_path(run, tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
    evaluator.evaluate_checkpoint(cli_config(), workdir=tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
    evaluator.evaluate_checkpoint(cli_config(), workdir=tmp_path / "empty")
  workdir, _, _, _ = run
  missing = workdir / "checkpoints" / "5"  # a step that was not saved
  with pytest.raises(FileNotFoundError, match=str(missing)):
    evaluator.evaluate_checkpoint(cli_config(), checkpoint=missing)
  with pytest.raises(ValueError, match="--workdir"):
    evaluator.evaluate_checkpoint(cli_config())


def test_dataset_not_built_says_how_to_build(run, tmp_path):
  workdir, _, _, _ = run
  config = cli_config()
  config.input.data_dir = str(tmp_path / "no_data")
  with pytest.raises(FileNotFoundError, match="python -m data_pipelines.datasets.build"):
    evaluator.evaluate_checkpoint(config, workdir=workdir, outdir=tmp_path)


def test_incompatible_config_is_refused(run, tmp_path):
  workdir, _, _, _ = run
  config = cli_config()
  config.model.mhsa_stages = (5,)
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError, match="model.mhsa_stages"):
    evaluator.evaluate_checkpoint(config, workdir=workdir, outdir=tmp_path)
  assert not (tmp_path / "eval").exists()


def _eval_py(*flags, cwd=REPO):
  cmd = [sys.executable, "eval.py", "--config=configs/tiny.py", *flags]
  env = {**os.environ, **_JAX_CACHE_ENV, "PYTHONPATH": str(REPO)}
  return ceiling.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, ceiling=ceiling.LONG)


def test_cli_end_to_end_with_rerank_prints_only_our_lines(run, expected, tmp_path):
  """A plain run with re-ranking: the results, and only the log lines, warnings and table of
  the project, nothing of orbax, tensorflow_datasets, jax, absl..."""
  workdir, _, _, _ = run
  proc = _eval_py(
    f"--workdir={workdir}",
    f"--outdir={tmp_path}",
    "--config.input.data_dir=",
    f"--config.eval.max_rank={MAX_RANK}",
    "--config.eval.num_figure_queries=3",
    "--config.eval.rerank=True",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = json.loads((tmp_path / "eval" / f"step_{STEPS[-1]}" / "metrics.json").read_text())
  assert saved["config_name"] == "tiny" and saved["step"] == STEPS[-1]
  assert_same_metrics(saved["metrics"], expected[STEPS[-1]]["metrics"])
  assert saved["eval"]["rerank"] and set(saved["metrics_rerank"]) == set(saved["metrics"])
  assert (tmp_path / "eval" / f"step_{STEPS[-1]}" / "ranked_list.png").stat().st_size > 0
  assert "mAP" in proc.stdout and "Wrote" in proc.stderr  # the table, the written paths
  assert third_party_lines(proc.stdout + proc.stderr) == []


def test_cli_verbosity_brings_third_party_lines_back(run, tmp_path):
  """`--verbosity=1` shows the third-party log lines a plain run hides (above)."""
  workdir, _, _, _ = run
  verbose = _eval_py(
    f"--workdir={workdir}",
    "--config.input.data_dir=",
    f"--config.eval.max_rank={MAX_RANK}",
    f"--outdir={tmp_path / 'verbose'}",
    "--verbosity=1",
  )
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "mAP" in verbose.stdout
  assert any("checkpoint_manager.py" in line for line in third_party_lines(verbose.stderr))


def test_cli_errors(tmp_path):
  proc = _eval_py(f"--workdir={tmp_path / 'nowhere'}")
  assert proc.returncode != 0
  assert f"ERROR: no checkpoint: {tmp_path / 'nowhere'} does not exist" in proc.stderr
  proc = _eval_py()
  assert proc.returncode != 0 and "--workdir" in proc.stderr
