"""What the commands print and record on small mistakes: the project's warnings as one
`WARNING:` line (no Python warning format), `score` given one file twice, and score's
JSON recording the CMC length it scored after cutting it at the gallery size."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from tests.reference import ceiling

REPO = pathlib.Path(__file__).resolve().parents[2]


def _python(*args: str) -> subprocess.CompletedProcess:
  return ceiling.run(
    [sys.executable, *args],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )


def test_a_project_warning_is_one_warning_line():
  proc = _python(
    "-c",
    textwrap.dedent("""
      from fsaf_jax.core import cli
      from fsaf_jax.evaluation import metrics

      def main(argv):
        metrics._check_max_rank(50, 12)  # warns: the CMC is cut at the gallery size

      cli.show_only_ours()
      cli.run(main)
    """),
  )
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.splitlines() == [
    "WARNING: max_rank=50 exceeds the gallery size 12: the CMC is cut at 12 (as torchreid does)."
  ]


def _features(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  rng = np.random.default_rng(0)
  written = []
  for name, pids, camids in (("q", [1, 2], [0, 0]), ("g", [1, 2, 1, 2], [1, 1, 0, 0])):
    path = folder / f"{name}.npz"
    feats = rng.normal(size=(len(pids), 8)).astype(np.float32)
    np.savez(path, feats=feats, pids=np.array(pids), camids=np.array(camids))
    written.append(path)
  return tuple(written)


def test_score_of_one_file_twice_is_refused_with_a_hint(tmp_path):
  query, _ = _features(tmp_path)
  proc = _python("-m", "fsaf_jax.score", str(query), str(query))
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert lines[0].startswith(f"ERROR: QUERY.npz and GALLERY.npz are the same file ({query})")
  assert lines[1].startswith("hint: pass the query and the gallery features")


def test_score_json_records_the_cmc_length_scored(tmp_path):
  query, gallery = _features(tmp_path)
  out = tmp_path / "m.json"
  proc = _python("-m", "fsaf_jax.score", str(query), str(gallery), f"--json={out}")
  assert proc.returncode == 0, proc.stderr
  assert "score: warning: max_rank=50 exceeds the gallery size 4" in proc.stderr
  saved = json.loads(out.read_text())
  assert saved["max_rank"] == 4 == len(saved["plain"]["cmc"])
