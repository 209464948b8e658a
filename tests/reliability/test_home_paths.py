"""`~` in the paths every command takes: HOME is a temporary folder and each command runs
from another folder (cwd) with `~/...` paths, as bash passes `--flag=~/x` (it expands `~`
only at the start of a word). What a command writes must land under HOME, and no folder
named `~` may appear in the cwd (deleting it with `rm -rf ~` deletes the home).

eval.py also shows, on the same runs, which data it reads: the run's (the checkpoint
records its data_dir), not whatever market1501 build sits in the config file's default
`~/tensorflow_datasets`; and the max_rank warning as one `WARNING:` line.
"""

import ast
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipelines.datasets import source
from fsaf_jax.core import paths
from tests.reference import ceiling, reid_layouts, saved_run, tiny_market

ROOT = pathlib.Path(__file__).resolve().parents[2]
STEP = 3


# Flags whose value is a path (every command's), and where commands are defined.
PATH_FLAGS = {"workdir", "checkpoint", "outdir", "out", "images", "export", "json", "data"}
PATH_FLAGS |= {"data_dir", "manual_dir", "src", "dst"}
COMMAND_DIRS = ("", "fsaf_jax", "data_pipelines", "benchmarks")


def test_every_path_flag_is_a_path_flag_expanding_home(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path))
  assert paths.PathParser().parse("~/runs/a") == f"{tmp_path}/runs/a"
  assert paths.PathParser().parse("gs://bucket/~x") == "gs://bucket/~x"
  plain = []
  for folder in COMMAND_DIRS:
    files = (ROOT / folder).glob("*.py") if not folder else (ROOT / folder).rglob("*.py")
    for file in files:
      for node in ast.walk(ast.parse(file.read_text())):
        if (
          isinstance(node, ast.Call)
          and getattr(node.func, "attr", getattr(node.func, "id", "")) == "DEFINE_string"
          and node.args
          and isinstance(node.args[0], ast.Constant)
          and node.args[0].value in PATH_FLAGS
        ):
          plain.append(f"{file.relative_to(ROOT)}: --{node.args[0].value}")
  assert plain == [], "path flags defined with DEFINE_string (no ~ expansion): use DEFINE_path"


def run_command(home: pathlib.Path, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  """`python ARGS` with HOME=`home`, from `cwd`; asserts it succeeded and left no `~`."""
  cwd.mkdir(parents=True, exist_ok=True)
  env = {
    **os.environ,
    "HOME": str(home),
    "PYTHONPATH": str(ROOT),
    "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
  }
  proc = ceiling.run([sys.executable, *args], cwd=cwd, env=env, ceiling=ceiling.LONG)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert not (cwd / "~").exists(), sorted(os.listdir(cwd))
  return proc


@pytest.fixture(scope="module")
def home(tmp_path_factory):
  """HOME holding a work dir `run/` with a checkpoint at STEP of the tiny Market tree
  (built outside HOME), and another, smaller market1501 build in the config file's
  default data_dir `~/tensorflow_datasets`."""
  tmp = tmp_path_factory.mktemp("home_paths")
  home = tmp / "home"
  data_dir = tiny_market.build(tmp / "tiny")
  saved_run.save_run(home / "run", saved_run.run_config(data_dir), (STEP,))
  other = tmp / "other_download"
  reid_layouts.write_images(other / reid_layouts.MARKET_TOP, reid_layouts.MARKET_FILES)
  source.build("market1501", home / "tensorflow_datasets", other)
  assert len(source.load_source("market1501", "query", home / "tensorflow_datasets")) != (
    tiny_market.NUM_QUERY
  )
  return home, data_dir


@pytest.mark.slow
def test_eval_py_home_workdir_writes_under_home_and_reads_the_runs_data(home, tmp_path):
  home, data_dir = home
  proc = run_command(
    home,
    tmp_path,
    str(ROOT / "eval.py"),
    f"--config={ROOT / 'configs' / 'tiny.py'}",
    "--workdir=~/run",
  )
  written = home / "run" / "eval" / f"step_{STEP}" / "metrics.json"
  assert f"Wrote {written}" in proc.stderr
  saved = json.loads(written.read_text())
  # The run's data (recorded by the checkpoint), not ~/tensorflow_datasets' build.
  assert saved["num_query"] == tiny_market.NUM_QUERY
  assert saved["config"]["input"]["data_dir"] == str(data_dir)
  # The max_rank warning (50 > the gallery) as one line, not Python's warning format.
  assert f"WARNING: max_rank=50 exceeds the gallery size {tiny_market.NUM_GALLERY}" in proc.stderr
  assert "UserWarning" not in proc.stderr and "warnings.warn" not in proc.stderr


@pytest.mark.slow
def test_eval_py_home_checkpoint_and_outdir(home, tmp_path):
  home, _ = home
  run_command(
    home,
    tmp_path,
    str(ROOT / "eval.py"),
    f"--config={ROOT / 'configs' / 'tiny.py'}",
    f"--checkpoint=~/run/checkpoints/{STEP}",
    "--outdir=~/results",
    "--config.eval.num_figure_queries=0",
  )
  assert (home / "results" / "eval" / f"step_{STEP}" / "metrics.json").is_file()


@pytest.mark.slow
def test_extract_home_images_and_out(home, tmp_path):
  home, data_dir = home
  shutil.copytree(data_dir.parent / "manual" / tiny_market.TOP / "query", home / "images")
  run_command(
    home,
    tmp_path / "cwd",
    "-m",
    "fsaf_jax.extract",
    f"--config={ROOT / 'configs' / 'tiny.py'}",
    "--random_weights",
    "--images=~/images",
    "--out=~/query.npz",
  )
  assert len(np.load(home / "query.npz")["feats"]) == tiny_market.NUM_QUERY


def test_score_home_inputs_and_json(tmp_path):
  home = tmp_path / "home"
  home.mkdir()
  rng = np.random.default_rng(0)
  for name, pids, camids in (("q", [1, 2], [0, 0]), ("g", [1, 2, 1, 2], [1, 1, 0, 0])):
    feats = rng.normal(size=(len(pids), 8)).astype(np.float32)
    np.savez(home / f"{name}.npz", feats=feats, pids=np.array(pids), camids=np.array(camids))
  proc = run_command(
    home, tmp_path / "cwd", "-m", "fsaf_jax.score", "~/q.npz", "~/g.npz", "--json=~/m.json"
  )
  assert f"Wrote {home / 'm.json'}" in proc.stdout
  assert json.loads((home / "m.json").read_text())["features"] == f"{home}/q.npz + {home}/g.npz"


def test_synthetic_home_out(tmp_path):
  home = tmp_path / "home"
  home.mkdir()
  proc = run_command(
    home,
    tmp_path / "cwd",
    "-m",
    "data_pipelines.synthetic",
    "--out=~/synthetic",
    "--ids=4",
    "--train_ids=2",
    "--height=32",
    "--width=16",
  )
  assert (home / "synthetic" / "Market-1501-v15.09.15" / "query").is_dir()
  assert str(home / "synthetic") in proc.stdout
