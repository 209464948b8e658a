"""eval.py while a run with `keep_checkpoints=1` saves: the checkpoint being read is
deleted by the run as it saves the next one. That is not damage: the newer checkpoint
is read (`checkpoint_restore.restore_for_inference`), and a run that keeps replacing
them faster than they are read ends in one line saying so.

The live run is simulated at the moment it matters: the first read of a step saves a
newer step (a copy) and deletes the one being read, as orbax's rotation does.
"""

import shutil

import jax
import numpy as np
import pytest

from data_pipelines import errors
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.training import checkpoint as checkpoint_lib
from tests.reliability import checkpoint_damage as damage

STEP = 2


@pytest.fixture
def workdir(tmp_path):
  """A work dir holding one checkpoint (keep_checkpoints=1), at STEP."""
  manager = checkpoint_lib.create_checkpoint_manager(tmp_path, keep=1)
  state = damage.small_state(STEP, STEP)
  assert checkpoint_lib.save_checkpoint(
    manager, STEP, state, damage.FakeIterator(STEP), damage.resolved_config()
  )
  manager.wait_until_finished()
  manager.close()
  return tmp_path


def rotate_on_read(monkeypatch, times: int | None):
  """Makes the first `times` reads (None: every read) find their step replaced by the
  next one, saved by a 'live run' (the folder copied) while it is read."""
  real = checkpoint_restore._read_inference_step
  reads = []

  def read(directory, step):
    reads.append(step)
    if times is None or len(reads) <= times:
      shutil.copytree(directory / str(step), directory / str(step + STEP))
      shutil.rmtree(directory / str(step))
    return real(directory, step)

  monkeypatch.setattr(checkpoint_restore, "_read_inference_step", read)
  return reads


def test_a_checkpoint_rotated_away_while_read_is_not_damage(workdir, monkeypatch):
  reads = rotate_on_read(monkeypatch, times=2)
  step, _, variables = checkpoint_restore.restore_for_inference(workdir)
  assert reads == [STEP, 2 * STEP, 3 * STEP] and step == 3 * STEP
  want = jax.device_get(damage.small_state(STEP, STEP).variables)
  assert all(
    np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(want), strict=True)
  )


def test_checkpoints_replaced_at_every_read_end_in_one_line(workdir, monkeypatch):
  rotate_on_read(monkeypatch, times=None)
  with pytest.raises(errors.UserError, match="a run is saving there") as e:
    checkpoint_restore.restore_for_inference(workdir)
  assert "keep_checkpoints" in str(e.value) and "damaged" not in str(e.value)
