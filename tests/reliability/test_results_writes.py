"""Evaluation results on a disk that fills up: one line naming the folder, and the files
already there keep their content (fsaf_jax/evaluation/result_dirs.py)."""

import errno
import json

import pytest
from etils import epath

from fsaf_jax.core import whole_file
from fsaf_jax.evaluation import report, result_dirs


def failing_write_bytes(monkeypatch, after_bytes: int = 10):
  """Makes `epath.Path.write_bytes` write `after_bytes` bytes, then fail with ENOSPC."""

  def write_bytes(self, data):
    with open(self, "wb") as f:
      f.write(data[:after_bytes])
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(type(epath.Path("/")), "write_bytes", write_bytes)


def test_a_failed_write_keeps_the_old_file_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "eval" / "step_6" / "metrics.json"
  path.parent.mkdir(parents=True)
  path.write_text('{"old": true}\n')
  failing_write_bytes(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    report.write_metrics_json(path, {})
  assert json.loads(path.read_text()) == {"old": True}
  assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]


def test_a_failed_write_is_one_line_naming_the_folder(tmp_path, monkeypatch):
  folder = tmp_path / "eval" / "step_2"
  failing_write_bytes(monkeypatch)
  with pytest.raises(result_dirs.ResultsWriteError) as e:
    with result_dirs.reporting_write_errors(folder):
      whole_file.write_whole(folder / "ranked_list.png", b"x" * 100)
  message = str(e.value)
  assert "\n" not in message
  assert f"writing the evaluation results to {folder} failed: OSError: No space left" in message
  assert "free there" in message
  assert not (folder / "ranked_list.png").exists()


def test_a_whole_write_replaces_the_file(tmp_path):
  path = tmp_path / "a" / "f.json"
  whole_file.write_whole(path, b"one")
  whole_file.write_whole(path, b"two")
  assert path.read_bytes() == b"two"
  assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]
