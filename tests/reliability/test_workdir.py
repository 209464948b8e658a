"""The work directory misused on purpose: two runs on it, a refused resume, a setting that
would save every step, evaluation of an older step, damaged checkpoints under eval.py
and train.py, a NaN after a damaged checkpoint.

The tiny synthetic run (tests/reference/tiny_synthetic_run.py: 6 steps, a checkpoint
every 2) is trained once in process (`trained`); each test works on a copy.
"""

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest

from data_pipelines.errors import UserError
from fsaf_jax.core import checkpoint_integrity as integrity
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.evaluation import evaluator, result_dirs
from fsaf_jax.training import train_loop, workdir_lock
from tests.reference import ceiling, read_only
from tests.reference import tiny_synthetic_run as run
from tests.reference.batch_index_log import BatchIndexLog, read_batch_index_log
from tests.reference.poisoned_step import poison_loss_at
from tests.reliability import checkpoint_damage as damage

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOTAL_STEPS = run.STEPS_PER_EPOCH * run.NUM_EPOCHS

HOLDER = """\
import sys, time
from fsaf_jax.training.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(3600)
"""


def env() -> dict[str, str]:
  return {
    **os.environ,
    "PYTHONPATH": str(ROOT),
    "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".cache" / "jax"),
  }


@pytest.fixture(scope="module")
def trained(tiny_run):
  """conftest's `tiny_run` (shared with tests/fsaf_jax/training/test_train_loop.py)."""
  return tiny_run[0]


@pytest.fixture
def workdir(trained, tmp_path):
  shutil.copytree(trained, tmp_path / "w")
  return tmp_path / "w"


@pytest.fixture
def holder(tmp_path):
  """A process holding the lock of `tmp_path / 'locked'`: (workdir, process)."""
  locked = tmp_path / "locked"
  locked.mkdir()
  proc = subprocess.Popen(
    [sys.executable, "-c", HOLDER, str(locked)],
    cwd=ROOT,
    env=env(),
    stdout=subprocess.PIPE,
    text=True,
  )
  assert ceiling.readline(proc, "the holder's 'locked'") == "locked"
  yield locked, proc
  proc.kill()
  proc.wait()


def eval_config():
  """The tiny run's config with an empty data_dir: the checkpoint's data."""
  c = run.config("/unused")
  c.input.data_dir = ""
  return c


def checkpoint_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
  )


# --- The lock. ---------------------------------------------------------------------------


def test_a_second_run_is_refused_naming_the_holder(holder):
  locked, proc = holder
  with pytest.raises(workdir_lock.WorkdirLockedError) as e:
    workdir_lock.WorkdirLock(locked).acquire()
  assert f"pid {proc.pid}" in str(e.value) and str(locked) in str(e.value)
  assert isinstance(e.value, UserError)


def test_a_killed_runs_lock_is_taken_over(holder, caplog):
  locked, proc = holder
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with caplog.at_level(logging.WARNING):
    with workdir_lock.WorkdirLock(locked) as lock:
      owner = json.loads(pathlib.Path(lock.path).read_text())
      assert owner["pid"] == os.getpid()
  assert any(f"from pid {proc.pid}" in r.getMessage() for r in caplog.records)
  # Released: another one may take it (and the emptied file names nobody).
  with workdir_lock.WorkdirLock(locked):
    pass
  assert (locked / workdir_lock.LOCK_FILE).read_text() == ""


def run_user_error(script: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
  """Runs `python SCRIPT ARGS` from the repository root; asserts exit status 2.

  Returns:
    (the completed process, its stderr lines that start with 'ERROR:').
  """
  result = ceiling.run(
    [sys.executable, script, *args],
    cwd=ROOT,
    env=env(),
    capture_output=True,
    text=True,
    ceiling=ceiling.LONG,
  )
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
  return result, errors


def test_train_py_on_a_locked_workdir_exits_2_with_one_line(holder, data_root, tmp_path):
  locked, proc = holder
  config_file = run.write_config_file(tmp_path / "tiny_run.py", data_root)
  before = sorted(p.name for p in locked.iterdir())
  result, errors = run_user_error("train.py", f"--config={config_file}", f"--workdir={locked}")
  assert len(errors) == 1 and f"pid {proc.pid}" in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert sorted(p.name for p in locked.iterdir()) == before  # nothing written


# --- Settings and refused resumes leave the work dir as it was. --------------------------


@pytest.mark.parametrize(
  "field, message",
  [
    ("checkpoint_every_steps", "checkpoint_every_steps=0: must be >= 1"),
    ("keep_checkpoints", "keep_checkpoints must be >= 1"),
  ],
)
def test_zero_checkpoint_settings_are_refused_before_anything_is_written(
  data_root, tmp_path, field, message
):
  c = run.config(data_root)
  c.train[field] = 0
  with pytest.raises(UserError, match=message):
    train_loop.train_and_evaluate(c, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("size", [(64,), (0, 32), (64, -32), (64.5, 32)])
def test_bad_image_sizes_are_refused_before_anything_is_written(data_root, tmp_path, size):
  c = run.config(data_root)
  c.input.image_size = size
  with pytest.raises(UserError, match=r"config.input.image_size=.*two positive integers"):
    train_loop.train_and_evaluate(c, tmp_path / "w")
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
  "section, field, value, message",
  [
    ("train", "num_epochs", 0, "num_epochs=0: must be >= 1"),
    ("train", "num_epochs", -1, "num_epochs=-1: must be >= 1"),
    ("input", "num_workers", -1, "num_workers=-1: must be >= 0"),
    ("train", "eval_every_epochs", -1, "eval_every_epochs=-1: must be >= 0"),
    ("train", "log_every_steps", 0, "log_every_steps=0: must be >= 1"),
    ("input", "num_instances", 1, "num_instances=1: the triplet loss needs K >= 2"),
    ("loss", "label_smoothing", 1.5, r"label_smoothing=1.5: must be in \[0, 1\)"),
  ],
)
def test_loop_and_loader_settings_are_refused_before_anything_is_written(
  data_root, tmp_path, section, field, value, message
):
  c = run.config(data_root)
  c[section][field] = value
  with pytest.raises(UserError, match=message):
    train_loop.train_and_evaluate(c, tmp_path / "w")
  assert not (tmp_path / "w").exists()


def test_refused_resume_keeps_config_json(workdir, data_root):
  before = damage.tree_dir_snapshot(workdir)
  c = run.config(data_root)
  c.optim.base_lr = 1e-2
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError):
    train_loop.train_and_evaluate(c, workdir)
  after = damage.tree_dir_snapshot(workdir)
  assert after["config.json"] == before["config.json"]
  assert json.loads(after["config.json"])["optim"]["base_lr"] == run.config(data_root).optim.base_lr
  # The run card still describes the accepted run, not the refused one.
  assert after["run_card.json"] == before["run_card.json"]
  assert {k for k in after if k.startswith("checkpoints/")} == {
    k for k in before if k.startswith("checkpoints/")
  }


def test_a_run_of_another_config_is_refused_before_any_data_work(workdir, data_root, monkeypatch):
  before = damage.tree_dir_snapshot(workdir)
  c = run.config(data_root)
  c.model.last_stride = 1
  monkeypatch.setattr(train_loop, "setup_run", lambda *a, **k: pytest.fail("data work started"))
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError, match="model.last_stride"):
    train_loop.train_and_evaluate(c, workdir)
  after = damage.tree_dir_snapshot(workdir)
  after.pop("train.lock", None), before.pop("train.lock", None)
  assert after == before


# --- Results per step. -------------------------------------------------------------------


def test_training_writes_the_final_steps_results(trained):
  final = trained / "eval" / f"step_{TOTAL_STEPS}"
  assert (final / "metrics.json").is_file() and (final / "ranked_list.png").is_file()
  assert result_dirs.latest_dir(trained) == final
  assert json.loads((final / "metrics.json").read_text())["step"] == TOTAL_STEPS


def test_evaluating_an_older_step_keeps_the_final_results(workdir):
  final = workdir / "eval" / f"step_{TOTAL_STEPS}"
  before = damage.tree_dir_snapshot(final)
  result = evaluator.evaluate_checkpoint(
    eval_config(), checkpoint=workdir / "checkpoints" / "2", config_name="tiny"
  )
  assert result["step"] == 2
  older = workdir / "eval" / "step_2"
  assert json.loads((older / "metrics.json").read_text())["step"] == 2
  assert (older / "ranked_list.png").is_file()
  assert damage.tree_dir_snapshot(final) == before  # untouched
  assert result_dirs.latest_step(workdir) == TOTAL_STEPS  # still the newest trained step


def test_eval_workdir_skips_a_damaged_newest_checkpoint(workdir, caplog):
  damage.flip_byte(damage.largest_file(workdir / "checkpoints" / str(TOTAL_STEPS) / "variables"))
  with caplog.at_level(logging.WARNING):
    result = evaluator.evaluate_checkpoint(eval_config(), workdir=workdir, write_figure=False)
  assert result["step"] == TOTAL_STEPS - 2
  warnings = [r.getMessage() for r in caplog.records if "damaged checkpoint" in r.getMessage()]
  assert len(warnings) == 1 and f"damaged checkpoint {TOTAL_STEPS} in" in warnings[0]
  assert f"using the newest intact one, step {TOTAL_STEPS - 2}" in warnings[0]
  # eval.py only reads: the damaged step stays where it is.
  assert TOTAL_STEPS in checkpoint_steps(workdir)


def test_eval_py_on_a_damaged_checkpoint_exits_2_naming_it(workdir):
  step_dir = workdir / "checkpoints" / str(TOTAL_STEPS)
  damage.truncate(damage.largest_file(step_dir / "train_state"))  # eval reads variables only
  damage.truncate(damage.largest_file(step_dir / "variables"))
  results_before = damage.tree_dir_snapshot(workdir / "eval")
  result, errors = run_user_error("eval.py", "--config=configs/tiny.py", f"--checkpoint={step_dir}")
  assert errors == [errors[0]] and f"ERROR: checkpoint {step_dir} is damaged: " in errors[0]
  assert "Traceback" not in result.stderr
  assert damage.tree_dir_snapshot(workdir / "eval") == results_before  # nothing written


def test_eval_on_a_read_only_workdir_fails_before_the_evaluation(workdir, monkeypatch):
  # Root writes through permissions: the permission answer is simulated (os.access).
  read_only.deny_writes_under(monkeypatch, workdir)
  monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated"))
  results_before = damage.tree_dir_snapshot(workdir / "eval")
  with pytest.raises(UserError, match=r"--workdir=.*: the directory is not writable") as e:
    evaluator.evaluate_checkpoint(eval_config(), workdir=workdir)
  assert "--outdir" in e.value.hint
  assert damage.tree_dir_snapshot(workdir / "eval") == results_before


def test_eval_results_folder_that_is_a_file_is_refused_before_the_evaluation(workdir, monkeypatch):
  monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated"))
  final = workdir / "eval" / f"step_{TOTAL_STEPS}"
  shutil.rmtree(final)
  final.write_text("notes")
  with pytest.raises(UserError, match=rf"step_{TOTAL_STEPS} is a file"):
    evaluator.evaluate_checkpoint(eval_config(), workdir=workdir)
  assert final.read_text() == "notes"


def test_eval_latest_pointer_that_is_a_folder_is_refused_before_the_evaluation(
  workdir, monkeypatch
):
  monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated"))
  latest = workdir / "eval" / "latest"
  latest.unlink()
  latest.mkdir()
  with pytest.raises(UserError, match=r"latest is a folder"):
    evaluator.evaluate_checkpoint(eval_config(), checkpoint=workdir / "checkpoints" / "2")
  assert latest.is_dir() and not (workdir / "eval" / "step_2").exists()


def test_extract_with_another_network_config_exits_2_naming_the_fields(workdir, tmp_path):
  result, errors = run_user_error(
    "-m",
    "fsaf_jax.extract",
    "--config=configs/demo.py",
    f"--workdir={workdir}",
    f"--images={workdir}",
    f"--out={tmp_path / 'f.npz'}",
  )
  assert errors == [errors[0]] and "trained with another network" in errors[0]
  assert "model.widths: checkpoint" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "f.npz").exists()


# --- Resume and the NaN stop over damaged checkpoints. -----------------------------------


def test_resume_skips_a_damaged_checkpoint_and_trains_to_the_end(workdir, data_root, caplog):
  """Step 6 (the last) damaged: resume from 4, train step 5-6 again, save a new 6."""
  final = workdir / "checkpoints" / str(TOTAL_STEPS)
  damage.delete(final / "variables")
  with caplog.at_level(logging.WARNING):
    result = train_loop.train_and_evaluate(
      run.config(data_root), workdir, on_step=BatchIndexLog(workdir)
    )
  assert result.step == TOTAL_STEPS
  assert any(f"damaged checkpoint {TOTAL_STEPS} in" in r.getMessage() for r in caplog.records)
  assert (workdir / integrity.DAMAGED_SUBDIR / str(TOTAL_STEPS)).is_dir()
  assert integrity.verify_manifest(final)  # a new, whole step 6
  log = read_batch_index_log(workdir)
  assert sorted(log) == list(range(1, TOTAL_STEPS + 1))


def test_nan_stop_names_the_newest_checkpoint_that_restores(data_root, tmp_path, monkeypatch):
  """Checkpoint 4 is damaged (its weights deleted) before the loss turns NaN at step 6:
  the message names step 2, not 4."""
  bad_step = 6

  def delete_the_weights_of_checkpoint_4():
    four = tmp_path / "checkpoints" / "4"
    # Finalised (renamed into place by orbax's thread) by now or very soon.
    ceiling.wait_until(four.is_dir, f"{four} renamed into place")
    shutil.rmtree(four / "variables")

  poison_loss_at(monkeypatch, bad_step, before=delete_the_weights_of_checkpoint_4)
  c = run.config(data_root)
  c.train.num_epochs = 5
  with pytest.raises(FloatingPointError) as e:
    train_loop.train_and_evaluate(c, tmp_path)
  assert f"loss is nan at step {bad_step}" in str(e.value)
  assert "the last checkpoint, step 2, holds the last good state" in str(e.value)
