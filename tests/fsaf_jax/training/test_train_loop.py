"""Tests of the training loop, in process, on the tiny synthetic run (see
tests/reference/tiny_synthetic_run.py): config resolution, exact resume (extended
schedule, SIGTERM), the batch sequence, NaN stops, metrics and outputs."""

import json
import math
import pathlib
import signal
import struct

import jax
import ml_collections
import numpy as np
import pytest

from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.training import data_setup, setup, train_loop, writers
from tests.reference import tiny_synthetic_run as run
from tests.reference.batch_index_log import BatchIndexLog, read_batch_index_log
from tests.reference.poisoned_step import poison_loss_at

TOTAL_STEPS = run.STEPS_PER_EPOCH * run.NUM_EPOCHS


@pytest.fixture(scope="module")
def straight(tiny_run):
  """An uninterrupted run (conftest's `tiny_run`, shared with tests/reliability):
  (workdir, result, final host variables, index log)."""
  workdir, result = tiny_run
  _, variables = checkpoint_restore.restore_variables(workdir)
  return workdir, result, variables, read_batch_index_log(workdir)


def max_abs_diff(a, b) -> float:
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  return max(jax.tree.leaves(diffs))


# --- Config resolution. -----------------------------------------------------------------


def _resolve(c, num_train_ids=10, sampler_steps=5, num_train_images=70):
  return setup.resolve_config(
    c, num_train_ids, sampler_steps_per_epoch=sampler_steps, num_train_images=num_train_images
  )


def test_resolve_config_from_data():
  c = run.config("/nowhere")
  resolved = _resolve(c, sampler_steps=5)
  assert resolved.model.num_classes == 10
  assert resolved.train.steps_per_epoch == 5  # the sampler's epoch
  assert c.model.num_classes == -1 and c.train.steps_per_epoch == -1  # input unchanged
  c.train.epoch_length = "images"  # fast-reid: len(train_set) // batch
  assert _resolve(c, num_train_images=70).train.steps_per_epoch == 70 // (run.P * run.K)
  c.train.epoch_length = "batches"
  with pytest.raises(ValueError, match="epoch_length='batches'"):
    _resolve(c)


def test_resolve_config_rejects_wrong_num_classes():
  c = run.config("/nowhere")
  c.model.num_classes = 751
  with pytest.raises(ValueError, match="num_classes=751.*10 training identities"):
    _resolve(c)


def test_resolve_config_keeps_explicit_steps_per_epoch():
  c = run.config("/nowhere")
  c.train.steps_per_epoch = 7
  assert _resolve(c).train.steps_per_epoch == 7
  c.train.steps_per_epoch = 0
  with pytest.raises(ValueError, match="steps_per_epoch"):
    _resolve(c)


def test_data_paths_default_to_workdir(tmp_path, monkeypatch):
  c = run.config("/nowhere")
  c.input.data_dir = ""
  c.input.manual_dir = ""
  resolved = data_setup.resolve_data_paths(c, tmp_path / "w")
  assert resolved.input.data_dir == str(tmp_path / "w" / "data" / "tfds")
  assert resolved.input.manual_dir == ""  # the TFDS default; no synthetic data here
  c.input.data_dir = "rel/tfds"
  c.input.manual_dir = "~/market"
  monkeypatch.chdir(tmp_path)
  resolved = data_setup.resolve_data_paths(c, "w")
  assert resolved.input.data_dir == str(tmp_path / "rel" / "tfds")
  assert resolved.input.manual_dir == str(pathlib.Path("~/market").expanduser())


# --- An uninterrupted run. ---------------------------------------------------------------


def test_run_trains_checkpoints_and_evaluates(straight, data_root):
  workdir, result, variables, _ = straight
  assert result.step == result.total_steps == TOTAL_STEPS
  assert result.signal is None
  steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == list(range(2, TOTAL_STEPS + 1, 2))
  saved, _ = checkpoint_restore.restore_variables(workdir)
  assert saved.model.num_classes == run.NUM_TRAIN_IDS
  assert saved.train.steps_per_epoch == run.STEPS_PER_EPOCH
  metrics = json.loads((workdir / "eval" / f"step_{TOTAL_STEPS}" / "metrics.json").read_text())
  assert (workdir / "eval" / "latest").read_text() == f"step_{TOTAL_STEPS}\n"
  assert metrics["step"] == TOTAL_STEPS
  assert 0.0 <= metrics["metrics"]["mAP"] <= 1.0
  assert result.eval["metrics"]["mAP"] == metrics["metrics"]["mAP"]
  assert list((workdir / "tb").glob("events.out.tfevents.*"))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(variables))
  card = json.loads((workdir / "run_card.json").read_text())
  assert card["splits"]["train"] == run.NUM_TRAIN_IDS * 4 and card["train_identities"] == 10
  assert (card["sampler"], card["steps_per_epoch"]) == (run.SAMPLER, run.STEPS_PER_EPOCH)
  assert card["total_steps"] == TOTAL_STEPS and card["pretrained"] == "scratch"


def test_batches_follow_the_sampler_sequence(straight, data_root):
  _, _, _, log = straight
  train = source_lib.load_source("market1501", "train", str(data_root / "tfds"))
  person_ids = np.array([train[i]["person_id"] for i in range(len(train))])
  expected = run.expected_batches(person_ids, TOTAL_STEPS)
  assert sorted(log) == list(range(1, TOTAL_STEPS + 1))
  assert [log[s] for s in range(1, TOTAL_STEPS + 1)] == expected
  for batch in expected:  # P identities x K images each
    ids = person_ids[batch]
    assert len(set(ids.tolist())) == run.P and all(
      (ids[:: run.K] == ids[i :: run.K]).all() for i in range(run.K)
    )


# --- Resume. -----------------------------------------------------------------------------


def test_resume_after_a_shorter_schedule_is_exact(straight, data_root, tmp_path):
  """2 epochs, then the same workdir with 3: equal to 3 epochs straight."""
  _, _, expected_vars, expected_log = straight
  c = run.config(data_root)
  c.train.num_epochs = 2  # a loop-only field: may differ on resume
  log = BatchIndexLog(tmp_path)
  first = train_loop.train_and_evaluate(c, tmp_path, on_step=log)
  assert first.step == 2 * run.STEPS_PER_EPOCH
  second = train_loop.train_and_evaluate(run.config(data_root), tmp_path, on_step=log)
  assert second.step == TOTAL_STEPS
  _, variables = checkpoint_restore.restore_variables(tmp_path)
  assert max_abs_diff(variables, expected_vars) <= 1e-6
  assert read_batch_index_log(tmp_path) == expected_log


def test_sigterm_saves_at_the_step_boundary_and_resumes_exactly(straight, data_root, tmp_path):
  _, _, expected_vars, expected_log = straight
  signal_step = 3  # not a checkpoint step (every 2)
  log = BatchIndexLog(tmp_path)

  def log_then_signal(step, batch):
    log(step, batch)
    if step == signal_step:
      signal.raise_signal(signal.SIGTERM)  # handled by the loop's StopOnSignal

  stopped = train_loop.train_and_evaluate(run.config(data_root), tmp_path, on_step=log_then_signal)
  assert stopped.signal == signal.SIGTERM
  assert stopped.step == signal_step
  assert stopped.eval is None  # no evaluation after a stop
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2, signal_step]
  # Nothing ran past the signal's step.
  assert max(read_batch_index_log(tmp_path)) == signal_step

  finished = train_loop.train_and_evaluate(run.config(data_root), tmp_path, on_step=log)
  assert finished.step == TOTAL_STEPS and finished.signal is None
  _, variables = checkpoint_restore.restore_variables(tmp_path)
  assert max_abs_diff(variables, expected_vars) <= 1e-6
  assert read_batch_index_log(tmp_path) == expected_log


def test_incompatible_checkpoint_is_refused(straight, data_root):
  workdir = straight[0]
  c = run.config(data_root)
  c.optim.base_lr = 1e-2
  c.input.num_instances = 4
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError) as e:
    train_loop.train_and_evaluate(c, workdir)
  assert "optim.base_lr: checkpoint 0.00035, this run 0.01" in str(e.value)
  assert "input.num_instances: checkpoint 2, this run 4" in str(e.value)


# --- Non-finite losses. ------------------------------------------------------------------


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
  data_root, tmp_path, monkeypatch
):
  bad_step = 4  # checkpoints at 2 (good) and 4 (must not be written)
  poison_loss_at(monkeypatch, bad_step)
  with pytest.raises(
    FloatingPointError,
    match=rf"loss is nan at step {bad_step}.*last checkpoint, step 2, holds the last good state",
  ):
    train_loop.train_and_evaluate(run.config(data_root), tmp_path)
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2]


@pytest.mark.slow  # its train.py twin (tests/test_train.py) is in the default set
def test_huge_learning_rate_stops_at_the_first_step(data_root, tmp_path):
  c = run.config(data_root)
  c.optim.base_lr = 1e30
  with pytest.raises(FloatingPointError, match=r"at step 1\b.*no checkpoint was saved"):
    train_loop.train_and_evaluate(c, tmp_path)
  assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_metric_logger_writes_event_files(tmp_path, capsys):
  logger = writers.MetricLogger(tmp_path / "tb", enabled=True)
  logger.write(5, {"loss": 1.5, "lr": 0.1})
  logger.close()
  assert "[train step 5] loss=1.5 lr=0.1" in capsys.readouterr().out
  (events_file,) = (tmp_path / "tb").glob("events.out.tfevents.*")
  scalars = read_scalars(events_file)
  assert scalars["train/loss"] == [(5, 1.5)]
  assert scalars["train/lr"][0][0] == 5 and math.isclose(
    scalars["train/lr"][0][1], 0.1, rel_tol=1e-6
  )


def read_scalars(path) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value)]} of a TensorBoard event file (TFRecord framing: u64 length,
  u32 crc, payload, u32 crc), parsed with tensorboardX's protos."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  data, pos, out = path.read_bytes(), 0, {}
  while pos < len(data):
    (length,) = struct.unpack("<Q", data[pos : pos + 8])
    event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
    pos += 12 + length + 4
    for value in event.summary.value:
      out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_config_json_written(straight):
  workdir = straight[0]
  saved = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
  assert saved.model.num_classes == run.NUM_TRAIN_IDS
