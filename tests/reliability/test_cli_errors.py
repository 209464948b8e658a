"""Each command-line entry, misused on purpose as a program: exit status 2, one `ERROR:`
line naming the file or flag (plus an optional hint), no traceback, files left as they
were. One process per entry (each start costs seconds); the in-process tests beside this
file cover the cases."""

import os
import pathlib
import subprocess
import sys

import numpy as np

from tests.reference import ceiling, reid_layouts

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
  return ceiling.run(
    [sys.executable, "-m", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    ceiling=ceiling.SHORT,
  )


def _assert_user_error(proc: subprocess.CompletedProcess, *named: str) -> str:
  """Exit 2; exactly one ERROR line, containing every `named`; only a hint may follow."""
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = proc.stderr.splitlines()
  errors = [i for i, line in enumerate(lines) if line.startswith("ERROR: ")]
  assert len(errors) == 1, proc.stderr
  after = lines[errors[0] + 1 :]
  assert len(after) <= 1 and all(line.startswith("hint: ") for line in after), proc.stderr
  for name in named:
    assert name in lines[errors[0]], (name, proc.stderr)
  return lines[errors[0]]


def _tree(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_score(tmp_path):
  (tmp_path / "empty.npz").write_bytes(b"")
  _assert_user_error(_run("fsaf_jax.score", str(tmp_path / "empty.npz")), "empty.npz", "0 bytes")


def test_score_json_directory_is_refused_before_scoring(tmp_path):
  np.savez(tmp_path / "q.npz", feats=np.eye(3), pids=[1, 2, 3], camids=[0, 0, 0])
  np.savez(tmp_path / "g.npz", feats=np.eye(3), pids=[1, 2, 3], camids=[1, 1, 1])
  proc = _run("fsaf_jax.score", str(tmp_path / "q.npz"), str(tmp_path / "g.npz"), "--json=/tmp")
  _assert_user_error(proc, "--json=/tmp is a directory")
  assert proc.stdout == ""  # no table: nothing was scored


def test_extract_without_weights(tmp_path):
  reid_layouts.write_images(tmp_path / "images", ["0002_c1s1_000451_03.jpg"])
  out = tmp_path / "out" / "f.npz"
  proc = _run(
    "fsaf_jax.extract",
    "--config=configs/tiny.py",
    f"--images={tmp_path / 'images'}",
    f"--out={out}",
  )
  _assert_user_error(proc, "no weights", "--workdir")
  assert "--random_weights" in proc.stderr.splitlines()[-1]
  assert not (tmp_path / "out").exists()


def test_convert_ibn_destination_is_a_directory(tmp_path):
  proc = _run("fsaf_jax.convert_ibn", str(tmp_path / "r50.pth"), str(tmp_path))
  _assert_user_error(proc, f"DST={tmp_path} is a directory")


def test_build_unknown_dataset_and_data_dir_a_file(tmp_path):
  (tmp_path / "a_file").write_text("x")
  proc = _run(
    "data_pipelines.datasets.build",
    "--dataset=market1501",
    f"--manual_dir={tmp_path}",
    f"--data_dir={tmp_path / 'a_file'}",
  )
  _assert_user_error(proc, "--data_dir=", "a_file is a file")
  assert _tree(tmp_path) == {"a_file": b"x"}


def test_synthetic_into_an_existing_market_folder(tmp_path):
  market = tmp_path / "Market-1501-v15.09.15"
  reid_layouts.write_images(market, ["query/0003_c1s1_000200_00.jpg"])
  before = _tree(market)
  proc = _run("data_pipelines.synthetic", f"--out={market}", "--ids=4")
  _assert_user_error(proc, str(market), "already holds a dataset")
  assert _tree(market) == before


def test_color_histogram_baseline_without_data(tmp_path):
  proc = _run("fsaf_jax.demo.color_histogram", f"--data={tmp_path / 'none'}")
  _assert_user_error(proc, "No Market-1501 folder", str(tmp_path / "none"))
