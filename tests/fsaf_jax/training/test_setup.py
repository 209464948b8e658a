"""Every config section is checked before any data work (`setup.check_settings`): a bad
model, evaluation or loss field stops a run on a config whose data folders do not exist,
naming the field, before the dataset build starts and before the work dir is made."""

import pytest

from configs import tiny
from data_pipelines.errors import UserError
from fsaf_jax.training import data_setup, train_loop


def _config_without_data(tmp_path):
  c = tiny.get_config()
  c.input.data_dir = str(tmp_path / "tfds")
  c.input.manual_dir = str(tmp_path / "no_such_dataset")
  return c


@pytest.mark.parametrize(
  "section, field, value, message",
  [
    ("model", "eca_placement", "blocks", r"model.eca_placement='blocks': must be one of"),
    # Only the abstract build (the attention's head split of a stage width) finds this.
    ("model", "num_heads", 3, r"model.num_heads=3 does not divide the Conv4_x width"),
    ("eval", "metric", "cosin", r"config.eval.metric='cosin'"),
    ("eval", "max_rank", 0, r"config.eval.max_rank=0"),
    ("loss", "label_smoothing", 1.5, r"config.loss.label_smoothing=1.5: must be in \[0, 1\)"),
    ("loss", "triplet_margin", -0.3, r"config.loss.triplet_margin=-0.3: must be >= 0"),
    ("loss", "focal_weight", 1.0, r"config.loss.focal_weight=1.0: there is no loss 'focal'"),
    ("loss", "triplet_weight", -1.0, r"config.loss.triplet_weight=-1.0: must be >= 0"),
  ],
)
def test_a_bad_field_fails_before_any_data_work(
  tmp_path, monkeypatch, section, field, value, message
):
  c = _config_without_data(tmp_path)
  with c.unlocked():
    c[section][field] = value
  monkeypatch.setattr(
    data_setup, "prepare_dataset", lambda *a, **k: pytest.fail("the dataset build started")
  )
  with pytest.raises(UserError, match=message):
    train_loop.train_and_evaluate(c, tmp_path / "work")
  assert not (tmp_path / "work").exists() and not (tmp_path / "tfds").exists()


def test_centre_loss_checks_its_learning_rate(tmp_path):
  c = _config_without_data(tmp_path)
  c.loss.center_weight, c.loss.center_lr = 5e-4, 0.0
  with pytest.raises(UserError, match=r"config.loss.center_lr=0.0: must be > 0"):
    train_loop.train_and_evaluate(c, tmp_path / "work")
  c.loss.center_weight = 0.0  # off: its fields are not read, so not checked
  c.eval.metric = "cosin"  # the next check in line fails instead
  with pytest.raises(UserError, match="config.eval.metric"):
    train_loop.train_and_evaluate(c, tmp_path / "work")
