"""Tests of fsaf_jax/training/checkpoint.py: config checks, retention, save / restore of
the train state and the iterator, `restore_variables` and its use by fsaf_jax.extract."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from configs import tiny
from fsaf_jax import extract
from fsaf_jax.core import checkpoint_restore, config_json
from fsaf_jax.core.mesh import make_mesh, replicated
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.models import registry
from fsaf_jax.training import checkpoint
from fsaf_jax.training.train_state import TrainState


class FakeIterator:
  """The iterator interface the checkpoints use (`get_state` / `set_state` / `start_prefetch`)."""

  def __init__(self, position: int):
    self.position = position
    self.started = False

  def get_state(self) -> bytes:
    return json.dumps({"next_batch": self.position}).encode()

  def set_state(self, state: bytes) -> None:
    self.position = json.loads(state)["next_batch"]

  def start_prefetch(self) -> None:
    self.started = True


def resolved_config():
  c = tiny.get_config()
  c.model.num_classes = 5
  c.train.steps_per_epoch = 3
  return c


def small_state(seed: int, step: int = 0, mesh=None, centres: bool = False) -> TrainState:
  """A TrainState of two small layers with Adam state, replicated over `mesh`; `centres`:
  with centre-loss centres [3, 4] in `loss_params` (and no optimiser state of theirs)."""
  rng = np.random.default_rng(seed)
  params = {
    "dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32), "bias": np.zeros(4, np.float32)}
  }
  batch_stats = {"bn": {"mean": rng.normal(size=4).astype(np.float32)}}
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  # Non-trivial moments, so that restoring them is visible.
  opt_state = jax.tree.map(
    lambda x: x + seed if jnp.issubdtype(x.dtype, jnp.floating) else x, opt_state
  )
  loss_params = {"center": rng.normal(size=(3, 4)).astype(np.float32)} if centres else {}
  state = TrainState(
    step=jnp.asarray(step, jnp.int32),
    params=params,
    batch_stats=batch_stats,
    loss_params=loss_params,
    opt_state=opt_state,
    tx=tx,
    lr_schedule=lambda s: 1e-3,
  )
  return jax.device_put(state, replicated(mesh or make_mesh()))


def leaves_equal(a, b) -> bool:
  return all(
    np.array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  )


# --- Config. ------------------------------------------------------------------------------


def test_config_json_round_trip():
  c = resolved_config()
  c.loss.triplet_margin = None  # soft margin: a None leaf
  back = config_json.config_from_json(json.loads(json.dumps(config_json.config_to_json(c))))
  assert back.to_dict() == c.to_dict()
  assert isinstance(back.model.widths, tuple) and back.model.widths == (8, 16, 32, 64)
  assert config_json.config_differences(back, c, ignore=lambda f: False) == []


def test_config_differences_name_the_fields_that_matter():
  saved, current = resolved_config(), resolved_config()
  current.model.widths = (8, 16, 32, 32)
  current.optim.base_lr = 1.0
  current.seed = 3
  # Loop-only fields: allowed to differ.
  current.train.num_epochs = 7
  current.train.log_every_steps = 1
  current.input.data_dir = "/elsewhere"
  current.eval.metric = "euclidean"
  assert checkpoint.resume_differences(saved, current) == [
    "model.widths: checkpoint (8, 16, 32, 64), this run (8, 16, 32, 32)",
    "optim.base_lr: checkpoint 0.00035, this run 1.0",
    "seed: checkpoint 0, this run 3",
  ]
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError, match="model.widths") as e:
    checkpoint.check_compatible(saved, current, "/ckpt/7")
  assert "/ckpt/7" in str(e.value) and "optim.base_lr" in str(e.value)


def test_config_differences_report_missing_fields():
  saved = config_json.config_to_json(resolved_config())
  del saved["loss"]["center_weight"]
  diffs = checkpoint.resume_differences(saved, resolved_config())
  assert diffs == ["loss.center_weight: checkpoint '<absent>', this run 0.0"]


# --- Manager. -----------------------------------------------------------------------------


def test_retention_keeps_the_latest_n(tmp_path):
  manager = checkpoint.create_checkpoint_manager(tmp_path, keep=2)
  config = resolved_config()
  for step in range(1, 6):
    assert checkpoint.save_checkpoint(
      manager, step, small_state(0, step), FakeIterator(step), config
    )
    manager.wait_until_finished()
  assert list(manager.all_steps()) == [4, 5]
  on_disk = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert on_disk == [4, 5]
  # An existing step is not saved again.
  assert not checkpoint.save_checkpoint(manager, 5, small_state(0, 5), FakeIterator(5), config)
  manager.close()


def test_keep_must_be_positive(tmp_path):
  with pytest.raises(ValueError, match="keep_checkpoints must be >= 1"):
    checkpoint.create_checkpoint_manager(tmp_path, keep=0)


@pytest.mark.parametrize("centres", [False, True])
def test_save_restore_round_trip(tmp_path, centres):
  mesh = make_mesh()
  config = resolved_config()
  saved_state = small_state(seed=1, step=7, mesh=mesh, centres=centres)
  manager = checkpoint.create_checkpoint_manager(tmp_path, keep=3)
  checkpoint.save_checkpoint(manager, 7, saved_state, FakeIterator(7), config)
  manager.wait_until_finished()

  target, data_iter = small_state(seed=2, mesh=mesh, centres=centres), FakeIterator(0)
  assert not leaves_equal(target.params, saved_state.params)
  assert not centres or not leaves_equal(target.loss_params, saved_state.loss_params)
  restored = checkpoint.restore_checkpoint(manager, target, data_iter, config)
  assert int(restored.step) == 7
  assert leaves_equal(restored.params, saved_state.params)
  assert leaves_equal(restored.batch_stats, saved_state.batch_stats)
  assert leaves_equal(restored.loss_params, saved_state.loss_params)
  assert sorted(restored.loss_params) == (["center"] if centres else [])
  assert leaves_equal(restored.opt_state, saved_state.opt_state)
  assert jax.tree.structure(restored.opt_state) == jax.tree.structure(saved_state.opt_state)
  assert restored.params["dense"]["kernel"].sharding == replicated(mesh)
  assert restored.tx is target.tx  # static fields come from the target
  assert data_iter.position == 7 and data_iter.started
  manager.close()


def test_restore_without_checkpoint_returns_the_state(tmp_path):
  manager = checkpoint.create_checkpoint_manager(tmp_path, keep=1)
  state = small_state(0)
  assert checkpoint.restore_checkpoint(manager, state, FakeIterator(0), resolved_config()) is state


def test_restore_refuses_an_incompatible_config(tmp_path):
  manager = checkpoint.create_checkpoint_manager(tmp_path, keep=1)
  checkpoint.save_checkpoint(manager, 3, small_state(0, 3), FakeIterator(3), resolved_config())
  manager.wait_until_finished()
  other = resolved_config()
  other.input.num_identities = 8
  other.train.num_epochs = 1  # allowed
  data_iter = FakeIterator(0)
  with pytest.raises(
    checkpoint_restore.IncompatibleCheckpointError,
    match=r"input.num_identities: checkpoint 4, this run 8",
  ):
    checkpoint.restore_checkpoint(manager, small_state(1), data_iter, other)
  assert data_iter.position == 0  # nothing restored


# --- Inference. ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fsaf_workdir(tmp_path_factory):
  """A work dir with checkpoints 2 and 4 of the tiny FSAF (variables from two seeds)."""
  workdir = tmp_path_factory.mktemp("fsaf_ckpt")
  config = resolved_config()
  model = registry.create_model(config.model, 5)
  h, w = config.input.image_size
  init = jax.jit(lambda r: model.init(r, jnp.zeros((1, h, w, 3)), train=False))
  manager = checkpoint.create_checkpoint_manager(workdir, keep=5)
  variables = {}
  for step, seed in ((2, 0), (4, 1)):
    v = init(jax.random.key(seed))
    variables[step] = jax.device_get(v)
    state = small_state(0, step)
    state = state.replace(params=v["params"], batch_stats=v["batch_stats"])
    checkpoint.save_checkpoint(manager, step, state, FakeIterator(step), config)
  manager.wait_until_finished()
  manager.close()
  return workdir, variables


@pytest.mark.parametrize(
  "where, step, expected_step",
  [("workdir", None, 4), ("checkpoints", None, 4), ("step_dir", None, 2), ("workdir", 2, 2)],
)
def test_restore_variables(fsaf_workdir, where, step, expected_step):
  workdir, variables = fsaf_workdir
  path = {
    "workdir": workdir,
    "checkpoints": workdir / "checkpoints",
    "step_dir": workdir / "checkpoints" / "2",
  }[where]
  config, restored = checkpoint_restore.restore_variables(path, step=step)
  assert config.model.num_classes == 5 and config.model.widths == (8, 16, 32, 64)
  assert set(restored) == {"params", "batch_stats"}
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored))
  assert leaves_equal(restored, variables[expected_step])


def test_restore_variables_errors(fsaf_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint at"):
    checkpoint_restore.restore_variables(tmp_path)
  with pytest.raises(FileNotFoundError, match="for step 3"):
    checkpoint_restore.restore_variables(fsaf_workdir[0], step=3)


def test_extract_uses_the_workdir_checkpoint(fsaf_workdir, tmp_path):
  workdir, variables = fsaf_workdir
  folder = tmp_path / "images"
  folder.mkdir()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)
  for i, image in enumerate(images):
    Image.fromarray(image).save(folder / f"{i}.png")
  config = tiny.get_config()  # num_classes -1: the checkpoint's
  out = extract.extract_folder(
    config, images=str(folder), out=str(tmp_path / "f.npz"), workdir=str(workdir)
  )

  model = registry.create_model(config.model, 5)
  reference = extractor_lib.make_extractor(model, variables[4], batch_size=4, image_size=(64, 32))
  np.testing.assert_allclose(out["feats"], reference(images), atol=1e-5)
  # Features of the other checkpoint differ: the latest one was used.
  other = extractor_lib.make_extractor(model, variables[2], batch_size=4, image_size=(64, 32))
  assert np.abs(out["feats"] - other(images)).max() > 1e-3


def test_extract_refuses_another_model(fsaf_workdir, tmp_path):
  Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(tmp_path / "0.png")
  config = tiny.get_config()
  config.model.widths = (8, 16, 32, 32)
  with pytest.raises(ValueError, match=r"model.widths: checkpoint \(8, 16, 32, 64\)"):
    extract.extract_folder(
      config, images=str(tmp_path), out=str(tmp_path / "f.npz"), workdir=str(fsaf_workdir[0])
    )


# --- Orbax is called with what it needs: no warnings on a normal save / restore. ----------

# orbax warns whenever a manager is read-only, whatever it is given.
_UNAVOIDABLE = {"Given directory is read only=%s"}


def orbax_warnings(caplog) -> list[str]:
  return [
    r.getMessage()
    for r in caplog.records
    if r.levelno >= logging.WARNING and "orbax" in r.pathname and r.msg not in _UNAVOIDABLE
  ]


def test_training_save_and_restore_do_not_warn(tmp_path, caplog):
  caplog.set_level(logging.WARNING)
  config = resolved_config()
  manager = checkpoint.create_checkpoint_manager(tmp_path, keep=3)
  checkpoint.save_checkpoint(manager, 5, small_state(1, 5), FakeIterator(5), config)
  manager.wait_until_finished()
  restored = checkpoint.restore_checkpoint(manager, small_state(2), FakeIterator(0), config)
  manager.close()
  assert int(restored.step) == 5
  reader = checkpoint.create_checkpoint_manager(tmp_path, keep=3, read_only=True)
  assert reader.all_steps() == [5]
  reader.close()
  assert orbax_warnings(caplog) == []


def test_inference_restores_do_not_warn(fsaf_workdir, caplog):
  caplog.set_level(logging.WARNING)
  workdir, _ = fsaf_workdir
  checkpoint_restore.restore_variables(workdir)
  assert checkpoint_restore.newest_restorable_step(workdir) == 4
  assert orbax_warnings(caplog) == []
