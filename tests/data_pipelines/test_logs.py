"""Tests of data_pipelines/logs.py: which log records and warnings a command-line entry
prints. The end-to-end checks (every console line of a plain eval.py / train.py run is
the project's; `--verbosity=1` brings third-party lines back) are in tests/test_eval.py
and tests/test_train.py; the filter of failed saves that must keep working under it in
tests/reliability/test_checkpoints.py."""

import logging
import pathlib
import subprocess
import sys
import textwrap

import orbax.checkpoint
import pytest

from data_pipelines import logs
from tests.reference import ceiling

REPO = pathlib.Path(__file__).resolve().parents[2]
OURS = [
  REPO / "train.py",
  REPO / "eval.py",
  REPO / "fsaf_jax" / "evaluation" / "evaluator.py",
  REPO / "data_pipelines" / "datasets" / "build.py",
  REPO / "configs" / "demo.py",
]
THIRD_PARTY = [
  pathlib.Path(orbax.checkpoint.__file__),
  pathlib.Path(logging.__file__),
  REPO / "tests" / "test_eval.py",
  REPO / "setup.py",
  pathlib.Path("/elsewhere/fsaf_jax/evaluation/evaluator.py"),
]


@pytest.mark.parametrize("path", OURS, ids=lambda p: p.name)
def test_our_files(path):
  assert logs.is_ours(str(path))


@pytest.mark.parametrize("path", THIRD_PARTY, ids=str)
def test_third_party_files(path):
  assert not logs.is_ours(str(path))


def record(path, level) -> logging.LogRecord:
  return logging.LogRecord("absl", level, str(path), 1, "message", None, None)


@pytest.mark.parametrize("level", [logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR])
def test_filter(level):
  f = logs.OursOnly()
  assert f.filter(record(OURS[2], level))
  assert f.filter(record(THIRD_PARTY[0], level)) == (level >= logging.ERROR)
  f.verbose = True
  assert f.filter(record(THIRD_PARTY[0], level))


def run_entry(tmp_path, *flags: str) -> subprocess.CompletedProcess:
  """An absl entry calling `logs.show_only_ours()` that logs and warns from a third-party
  module (in tmp_path) and from a project file."""
  (tmp_path / "other_package.py").write_text(
    textwrap.dedent("""\
      import warnings

      from absl import logging


      def speak():
        logging.info("other info")
        logging.warning("other warning")
        logging.error("other error")
        warnings.warn("other UserWarning", stacklevel=1)
      """)
  )
  script = textwrap.dedent("""\
    import logging
    import warnings

    from absl import app

    from data_pipelines import logs
    import other_package


    def main(argv):
      other_package.speak()
      # A record and a warning from a project file, as the project's code makes them.
      record = logging.LogRecord("absl", logging.INFO, logs.__file__, 1, "our info", None, None)
      logging.getLogger("absl").handle(record)
      warnings.warn_explicit("our UserWarning", UserWarning, logs.__file__, 1)


    if __name__ == "__main__":
      logs.show_only_ours()
      app.run(main)
    """)
  (tmp_path / "entry.py").write_text(script)
  env = {"PYTHONPATH": f"{REPO}:{tmp_path}", "PATH": "/usr/bin:/bin"}
  return ceiling.run(
    [sys.executable, str(tmp_path / "entry.py"), *flags],
    cwd=tmp_path,
    env=env,
    capture_output=True,
    text=True,
    ceiling=ceiling.SHORT,
  )


def test_entry_prints_only_ours_by_default(tmp_path):
  proc = run_entry(tmp_path)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout + proc.stderr
  assert "our info" in out and "our UserWarning" in out
  assert "other error" in out  # third-party errors still show
  for hidden in ("other info", "other warning", "other UserWarning"):
    assert hidden not in out


def test_verbosity_1_prints_third_party_lines(tmp_path):
  proc = run_entry(tmp_path, "--verbosity=1")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout + proc.stderr
  for shown in ("our info", "our UserWarning", "other info", "other warning", "other error"):
    assert shown in out
  assert "other UserWarning" in out
