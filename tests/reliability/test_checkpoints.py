"""Checkpoints damaged on purpose: detected, named in one line, skipped for an intact one;
failed saves stop at once and leave nothing partial (fsaf_jax/core/checkpoint_integrity.py,
fsaf_jax/training/save_monitor.py).

Checkpoints of a small state (two layers + Adam) are saved at steps 2 and 4 through the
`SaveMonitor` (as the training loop does: each gets its sha256 manifest), then step 4 is
damaged in one way per test: resume (`restore_checkpoint`) must come back with step 2's
values, one warning line naming step 4, and step 4 moved to `damaged_checkpoints/`;
inference on step 4 by name must raise one `DamagedCheckpointError` line naming it.
"""

import logging
import shutil
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fsaf_jax.core import checkpoint_integrity as integrity
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.training import checkpoint as checkpoint_lib
from fsaf_jax.training import save_monitor
from tests.reference import ceiling
from tests.reliability import checkpoint_damage as damage

STEPS = (2, 4)


def save_steps(workdir, steps=STEPS, nan_at=(), manifests=True):
  """Saves `small_state(seed=step, step)` at each step, as the loop does. Returns the
  host variables of each step."""
  manager = checkpoint_lib.create_checkpoint_manager(workdir, keep=5)
  monitor = save_monitor.SaveMonitor(manager, write_manifests=manifests)
  saved = {}
  config = damage.resolved_config()
  for step in steps:
    state = damage.small_state(step, step, nan=step in nan_at)
    monitor.finish()
    assert checkpoint_lib.save_checkpoint(manager, step, state, damage.FakeIterator(step), config)
    monitor.started(step)
    saved[step] = jax.device_get(state.variables)
  monitor.finish()
  monitor.close()
  manager.close()
  return saved


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """A work dir with intact checkpoints 2 and 4 (copied by each test before damaging)."""
  workdir = tmp_path_factory.mktemp("pristine")
  return workdir, save_steps(workdir)


@pytest.fixture
def workdir(pristine, tmp_path):
  source, _ = pristine
  shutil.copytree(source, tmp_path / "w")
  return tmp_path / "w"


def step_dir(workdir, step):
  return workdir / "checkpoints" / str(step)


def resume(workdir):
  manager = checkpoint_lib.create_checkpoint_manager(workdir, keep=5)
  try:
    it = damage.FakeIterator(0)
    state = checkpoint_lib.restore_checkpoint(
      manager, damage.small_state(0, 0), it, damage.resolved_config()
    )
    return state, it
  finally:
    manager.close()


def leaves_equal(a, b):
  return all(
    np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


def test_every_saved_step_has_a_manifest_that_verifies(pristine):
  workdir, _ = pristine
  for step in STEPS:
    folder = step_dir(workdir, step)
    assert (folder / integrity.MANIFEST_FILE).is_file()
    assert integrity.verify_manifest(folder) is True
  # The manifest lists every file of the step, with the sizes on disk.
  manifest = (step_dir(workdir, 4) / integrity.MANIFEST_FILE).read_text()
  for path in step_dir(workdir, 4).rglob("*"):
    if path.is_file() and path.name != integrity.MANIFEST_FILE:
      assert str(path.relative_to(step_dir(workdir, 4))) in manifest


def test_intact_checkpoints_restore_the_newest(workdir, pristine):
  _, saved = pristine
  state, it = resume(workdir)
  assert int(state.step) == 4 and it.position == 4
  assert leaves_equal(state.variables, saved[4])


DAMAGES = {
  "flipped byte in the weights": (
    lambda s: damage.flip_byte(damage.largest_file(s / "variables")),
    "differs from when it was saved",
  ),
  "truncated optimiser file": (
    lambda s: damage.truncate(damage.largest_file(s / "train_state")),
    "bytes, ",
  ),
  "deleted variables folder": (lambda s: damage.delete(s / "variables"), "is missing"),
  "garbled config": (lambda s: damage.garble(s / "config" / "metadata"), "config/metadata"),
  "garbled manifest": (
    lambda s: damage.garble(s / integrity.MANIFEST_FILE),
    "sha256sums.json is unreadable",
  ),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_resume_falls_back_to_the_newest_intact_checkpoint(workdir, pristine, name, caplog):
  _, saved = pristine
  do_damage, reason = DAMAGES[name]
  do_damage(step_dir(workdir, 4))
  with caplog.at_level(logging.WARNING):
    state, it = resume(workdir)
  assert int(state.step) == 2 and it.position == 2
  assert leaves_equal(state.variables, saved[2])
  skipped = [r.getMessage() for r in caplog.records if "damaged checkpoint 4" in r.getMessage()]
  assert len(skipped) == 1 and "\n" not in skipped[0]
  assert reason in skipped[0] and "resuming from the newest intact one, step 2" in skipped[0]
  # Kept for inspection, out of the way of the next save of step 4.
  assert not step_dir(workdir, 4).exists()
  assert (workdir / integrity.DAMAGED_SUBDIR / "4").is_dir()
  assert checkpoint_lib.create_checkpoint_manager(workdir, keep=5).all_steps() == [2]


@pytest.mark.parametrize("name", list(DAMAGES))
def test_inference_on_a_damaged_step_fails_in_one_line(workdir, name):
  do_damage, reason = DAMAGES[name]
  do_damage(step_dir(workdir, 4))
  with pytest.raises(integrity.DamagedCheckpointError) as e:
    checkpoint_restore.restore_for_inference(step_dir(workdir, 4))
  message = str(e.value)
  assert "\n" not in message
  assert message.startswith(f"checkpoint {step_dir(workdir, 4)} is damaged: ")
  assert reason in message
  # The work dir's newest intact one is used instead, naming the damaged one.
  step, _, _ = checkpoint_restore.restore_for_inference(workdir)
  assert step == 2


def test_without_manifest_a_damaged_file_is_caught_by_reading_it(workdir, pristine, caplog):
  _, saved = pristine
  for step in STEPS:
    (step_dir(workdir, step) / integrity.MANIFEST_FILE).unlink()
  damage.truncate(damage.largest_file(step_dir(workdir, 4) / "variables"))
  with pytest.raises(integrity.DamagedCheckpointError, match="it cannot be read") as e:
    checkpoint_restore.restore_for_inference(step_dir(workdir, 4))
  # One line naming the cause, without the reader's dump of its storage spec.
  assert "\n" not in str(e.value) and "TensorStore(" not in str(e.value)
  with caplog.at_level(logging.WARNING):
    state, _ = resume(workdir)
  assert int(state.step) == 2 and leaves_equal(state.variables, saved[2])
  assert any("cannot be read" in r.getMessage() for r in caplog.records)


def test_non_finite_values_are_damage(tmp_path):
  """A checkpoint holding NaN (written without a manifest, as before this check) is not a
  good state: skipped on resume, refused by name, and never named as the last good one."""
  saved = save_steps(tmp_path, nan_at=(4,), manifests=False)
  with pytest.raises(integrity.DamagedCheckpointError, match=r"params.*dense.*kernel.*NaN or inf"):
    checkpoint_restore.restore_for_inference(step_dir(tmp_path, 4))
  assert checkpoint_restore.newest_restorable_step(tmp_path) == 2
  state, _ = resume(tmp_path)
  assert int(state.step) == 2 and leaves_equal(state.variables, saved[2])


def test_newest_restorable_step_skips_damaged_ones(workdir):
  assert checkpoint_restore.newest_restorable_step(workdir) == 4
  damage.flip_byte(damage.largest_file(step_dir(workdir, 4) / "train_state"))
  assert checkpoint_restore.newest_restorable_step(workdir) == 2
  damage.delete(step_dir(workdir, 2) / "variables")
  assert checkpoint_restore.newest_restorable_step(workdir) is None


def test_all_damaged_is_refused_and_nothing_is_moved(workdir):
  for step in STEPS:
    damage.flip_byte(damage.largest_file(step_dir(workdir, step) / "variables"))
  before = damage.tree_dir_snapshot(workdir)
  with pytest.raises(
    integrity.DamagedCheckpointError,
    match=f"every checkpoint in {workdir / 'checkpoints'} is damaged",
  ):
    resume(workdir)
  with pytest.raises(
    integrity.DamagedCheckpointError,
    match=f"every checkpoint in {workdir / 'checkpoints'} is damaged",
  ):
    checkpoint_restore.restore_for_inference(workdir)
  assert damage.tree_dir_snapshot(workdir) == before


# --- Failed saves. -------------------------------------------------------------------------


def fail_finalize_at(monkeypatch, failing_step):
  """Makes orbax's background finalisation of `failing_step` fail as a full disk does."""
  finalize = ocp.CompositeCheckpointHandler.finalize

  def failing(self, directory):
    if directory.name.startswith(f"{failing_step}."):
      raise OSError(28, "No space left on device", str(directory / "variables"))
    return finalize(self, directory)

  monkeypatch.setattr(ocp.CompositeCheckpointHandler, "finalize", failing)


def test_failed_save_raises_one_line_and_leaves_no_partial_step(tmp_path, monkeypatch):
  fail_finalize_at(monkeypatch, 4)
  with pytest.raises(save_monitor.CheckpointSaveError) as e:
    save_steps(tmp_path)
  message = str(e.value)
  assert "\n" not in message
  directory = tmp_path / "checkpoints"
  assert f"saving checkpoint step 4 to {directory} failed" in message
  assert "No space left on device" in message and " free there" in message
  # Step 2 intact; nothing of step 4 (neither the folder nor orbax's temporary one).
  assert sorted(p.name for p in directory.iterdir()) == ["2"]
  assert integrity.verify_manifest(directory / "2")


def test_poll_reports_the_failure_without_waiting_for_the_next_save(tmp_path, monkeypatch):
  fail_finalize_at(monkeypatch, 2)
  manager = checkpoint_lib.create_checkpoint_manager(tmp_path, keep=5)
  monitor = save_monitor.SaveMonitor(manager)
  checkpoint_lib.save_checkpoint(
    manager, 2, damage.small_state(2, 2), damage.FakeIterator(2), damage.resolved_config()
  )
  monitor.started(2)
  with pytest.raises(save_monitor.CheckpointSaveError, match="step 2"):
    # The training loop polls once per step; poll() raises once orbax's thread failed.
    ceiling.wait_until(lambda: monitor.poll() is not None, "the failed save reported")
  assert list((tmp_path / "checkpoints").iterdir()) == []
  monitor.close()
  manager.close()


def test_free_space_is_reported(tmp_path):
  assert integrity.free_space(tmp_path).endswith(" free")
  assert integrity.free_space(tmp_path / "not" / "yet") == integrity.free_space(tmp_path)


def test_ctrl_c_while_waiting_for_a_save_leaves_it_to_orbax(tmp_path, monkeypatch):
  """A second Ctrl-C interrupts the wait for the save in flight; orbax logs the
  interruption (as it does: an ERROR record with the exception). The save is neither
  reported as failed nor removed under orbax's feet: it completes when the manager closes."""
  real_wait = ocp.CheckpointManager.wait_until_finished
  interrupt = {"next_wait": False}

  def interrupted_wait(self):
    if interrupt["next_wait"]:
      interrupt["next_wait"] = False
      try:
        raise KeyboardInterrupt
      except KeyboardInterrupt:
        record = logging.LogRecord(
          "absl",
          logging.ERROR,
          "/site-packages/orbax/checkpoint/checkpoint_manager.py",
          1,
          "Save Finalize thread (save_finalize) failed.",
          None,
          sys.exc_info(),
        )
        logging.getLogger("absl").handle(record)
        raise
    return real_wait(self)

  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", interrupted_wait)
  manager = checkpoint_lib.create_checkpoint_manager(tmp_path, keep=5)
  monitor = save_monitor.SaveMonitor(manager)
  checkpoint_lib.save_checkpoint(
    manager, 2, damage.small_state(2, 2), damage.FakeIterator(2), damage.resolved_config()
  )
  monitor.started(2)
  interrupt["next_wait"] = True
  with pytest.raises(KeyboardInterrupt):
    monitor.finish()
  monitor.finish()  # nothing pending, nothing reported
  manager.close()
  monitor.close()
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
  restored, _ = resume(tmp_path)
  assert int(restored.step) == 2
