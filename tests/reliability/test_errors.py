"""The one error path for user mistakes (`data_pipelines.errors`): the ERROR line, exit
status 2, flag and config-field mistakes, and output paths checked without touching disk."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
from absl import app

from data_pipelines import errors
from tests.reference import ceiling, read_only

REPO = pathlib.Path(__file__).resolve().parents[2]


def _snapshot(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- The runner, in process. -----------------------------------------------------------


def test_user_error_is_one_error_line_and_a_hint_exit_2(capsys):
  def main(argv):
    raise errors.UserError("--out=/x is a directory\n  (second line)", hint="pass a file")

  with pytest.raises(SystemExit) as exit_info:
    errors.user_errors(main)(["prog"])
  assert exit_info.value.code == errors.EXIT_USER_ERROR == 2
  assert capsys.readouterr().err == (
    "ERROR: --out=/x is a directory (second line)\nhint: pass a file\n"
  )


def test_usage_error_takes_the_same_path(capsys):
  def main(argv):
    raise app.UsageError("expected one argument")

  with pytest.raises(SystemExit) as exit_info:
    errors.user_errors(main)(["prog"])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.splitlines()
  assert err[0] == "ERROR: expected one argument" and err[1].startswith("hint: ")


def test_ctrl_c_is_one_line_exit_130(capsys):
  def main(argv):
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_info:
    errors.user_errors(main)(["prog"])
  assert exit_info.value.code == errors.EXIT_INTERRUPTED == 130
  assert capsys.readouterr().err == "Interrupted (Ctrl-C).\n"


def test_subclasses_of_user_error_are_caught_and_bugs_are_not(capsys):
  class MyError(errors.UserError, FileNotFoundError):
    pass

  with pytest.raises(SystemExit):
    errors.user_errors(lambda argv: (_ for _ in ()).throw(MyError("gone")))(["p"])
  assert capsys.readouterr().err == "ERROR: gone\n"

  def buggy(argv):
    raise KeyError("a bug keeps its traceback")

  with pytest.raises(KeyError):
    errors.user_errors(buggy)(["p"])


def test_project_error_classes_are_user_errors():
  from data_pipelines.datasets import image_check  # noqa: PLC0415
  from fsaf_jax import convert_ibn  # noqa: PLC0415
  from fsaf_jax.evaluation import inputs  # noqa: PLC0415
  from fsaf_jax.models import pretrained  # noqa: PLC0415

  for cls in (
    pretrained.PretrainedError,
    convert_ibn.ConversionError,
    image_check.CorruptImageError,
    inputs.EvaluationInputError,
    errors.InputNotFoundError,
    errors.OutputExistsError,
  ):
    assert issubclass(cls, errors.UserError) and issubclass(cls, ValueError), cls
  assert issubclass(errors.InputNotFoundError, FileNotFoundError)
  assert issubclass(errors.OutputExistsError, FileExistsError)
  # The errno-style OSError constructor is not triggered by the hint.
  e = errors.InputNotFoundError("no such thing", hint="h")
  assert str(e) == "no such thing" and e.hint == "h"


# --- Flags and config fields, through absl (a small program: flags are process-global). --

_PROGRAM = textwrap.dedent(
  """
  from absl import flags
  from ml_collections import config_flags
  from data_pipelines import errors

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  _OUT = flags.DEFINE_string("out", None, "Output.")
  flags.mark_flags_as_required(["config", "out"])

  def main(argv):
    print("ran", _CONFIG.value.optim.base_lr, _OUT.value)

  errors.run(main)
  """
)


def _run_program(*args: str) -> subprocess.CompletedProcess:
  return ceiling.run(
    [sys.executable, "-c", _PROGRAM, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    ceiling=ceiling.SHORT,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )


@pytest.mark.parametrize(
  "args, expected",
  [
    (
      ["--config=configs/tiny.py", "--out=x", "--config.optimizer.base_lr=0.1"],
      "ERROR: --config.optimizer.base_lr=0.1: unknown config field 'optimizer' "
      "(did you mean 'optim'?)",
    ),
    (
      ["--config=configs/tiny.py", "--out=x", "--config.optim.bse_lr=0.1"],
      "ERROR: --config.optim.bse_lr=0.1: unknown config field 'bse_lr' (did you mean 'base_lr'?)",
    ),
    (["--config=configs/nothere.py", "--out=x"], "ERROR: --config=configs/nothere.py: no such"),
    (
      ["--config=configs/fsaf.py:market,fsf", "--out=x"],
      "ERROR: --config=configs/fsaf.py:market,fsf: configs/fsaf.py takes DATASET,VARIANT after "
      "a ':' (got ':market,fsf'); valid: configs/fsaf.py:market,baseline, ",
    ),
    (
      ["--config=configs/fsaf.py", "--out=x"],
      "ERROR: --config=configs/fsaf.py: configs/fsaf.py takes DATASET,VARIANT after a ':' "
      "(got no argument)",
    ),
    (["--config=configs/tiny.py"], "ERROR: flag --out=None: Flag --out must have a value"),
    (["--config=configs/tiny.py", "--out=x", "--outt=y"], "ERROR: Unknown command line flag"),
    (["--config=configs/tiny.py", "--out=x", "--config.seed=1.5"], "ERROR: flag --config.seed"),
  ],
)
def test_command_line_mistakes_are_one_line_exit_2(args, expected):
  proc = _run_program(*args)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert lines[0].startswith(expected), proc.stderr
  assert len(lines) <= 2 and all(line.startswith("hint: ") for line in lines[1:]), proc.stderr
  assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_config_files_that_are_not_config_modules_are_one_line_exit_2(tmp_path):
  syntax = tmp_path / "bad.py"
  syntax.write_text("def get_config(:\n  return 1\n")
  no_function = tmp_path / "empty.py"
  no_function.write_text("x = 1\n")
  json_file = tmp_path / "config.json"
  json_file.write_text('{"flip": false}\n')
  cases = [
    (syntax, f"ERROR: --config={syntax}: syntax error in {syntax}, line 1: invalid syntax"),
    (no_function, f"ERROR: --config={no_function}: the config file defines no get_config()"),
    (json_file, f"ERROR: --config={json_file}: not a Python config file"),
  ]
  for path, expected in cases:
    proc = _run_program(f"--config={path}", "--out=x")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_correct_command_line_runs():
  proc = _run_program("--config=configs/tiny.py", "--out=x", "--config.optim.base_lr=0.5")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "ran 0.5 x"


# --- Output paths: checked before any work, nothing created. ----------------------------


def test_check_output_file(tmp_path):
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "a_dir").mkdir()
  before = _snapshot(tmp_path)
  with pytest.raises(errors.UserError, match=r"--out=.*a_dir is a directory"):
    errors.check_output_file(tmp_path / "a_dir", "--out")
  with pytest.raises(errors.UserError, match=r"a_file is not a directory"):
    errors.check_output_file(tmp_path / "a_file" / "sub" / "f.npz", "--out")
  with pytest.raises(errors.UserError, match="--out is empty"):
    errors.check_output_file("", "--out")
  errors.check_output_file(tmp_path / "a_file", "--out")  # overwriting a file is allowed
  errors.check_output_file(tmp_path / "new" / "deeper" / "f.npz", "--out")
  errors.check_output_file("gs://bucket/f.npz", "--out")  # remote: not checked
  assert _snapshot(tmp_path) == before  # nothing created


def test_check_output_dir(tmp_path):
  (tmp_path / "a_file").write_text("x")
  before = _snapshot(tmp_path)
  with pytest.raises(errors.UserError, match=r"--data_dir=.*a_file is a file"):
    errors.check_output_dir(tmp_path / "a_file", "--data_dir")
  with pytest.raises(errors.UserError, match="a_file is not a directory"):
    errors.check_output_dir(tmp_path / "a_file" / "sub", "--data_dir")
  errors.check_output_dir(tmp_path, "--data_dir")
  errors.check_output_dir(tmp_path / "new" / "deeper", "--data_dir")
  assert _snapshot(tmp_path) == before


def test_not_writable_places_are_refused(tmp_path, monkeypatch):
  # This machine runs the tests as root, for whom permissions do not restrict writes:
  # the permission answer is simulated (os.access) for one folder.
  locked = tmp_path / "locked"
  (locked / "existing").mkdir(parents=True)
  (locked / "f.npz").write_text("x")
  read_only.deny_writes_under(monkeypatch, locked)
  with pytest.raises(errors.UserError, match=r"DST=.*directory .*locked is not writable"):
    errors.check_output_file(locked / "new" / "x.msgpack", "DST")
  with pytest.raises(errors.UserError, match=r"the file exists and is not writable"):
    errors.check_output_file(locked / "f.npz", "--out")
  with pytest.raises(errors.UserError, match=r"--outdir=.*existing: the directory is not"):
    errors.check_output_dir(locked / "existing", "--outdir")
  with pytest.raises(errors.UserError, match=r"cannot create the directory"):
    errors.check_output_dir(locked / "new", "--outdir")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_read_only_folder_for_real(tmp_path):
  locked = tmp_path / "locked"
  locked.mkdir()
  locked.chmod(0o500)
  try:
    with pytest.raises(errors.UserError, match="not writable"):
      errors.check_output_file(locked / "x.npz", "--out")
  finally:
    locked.chmod(0o700)
