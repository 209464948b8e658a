"""The run card: lr landmarks read off the schedules, parameter counts, the table."""

import json

import jax
import numpy as np
import pytest

from configs.base import get_base_config
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.models.pretrained import PretrainedReport
from fsaf_jax.training import run_card
from fsaf_jax.training.optimizer import create_lr_schedule


def test_lr_landmarks_of_bots_schedule():
  spe = 3
  rows = run_card.lr_milestones(create_lr_schedule(get_base_config().optim, spe), spe, 120 * spe)
  assert [(r["what"], r["epoch"], r["step"]) for r in rows] == [
    ("start", 0, 0),
    ("warmup end", 9, 27),
    ("decay", 39, 117),
    ("decay", 69, 207),
  ]
  np.testing.assert_allclose([r["lr"] for r in rows], [3.815e-5, 3.5e-4, 3.5e-5, 3.5e-6], rtol=1e-6)


def test_lr_landmarks_of_fastreids_schedule_and_a_short_run():
  optim = get_base_config().optim
  optim.lr_schedule, optim.warmup_epochs, optim.warmup_iters = "fastreid", 0, 2000
  optim.warmup_factor, optim.milestones = 0.1, (40, 90)
  rows = run_card.lr_milestones(create_lr_schedule(optim, 202), 202, 120 * 202)
  # The warmup ends inside epoch 9 (iteration 2,000); epoch 10 is the first to start at
  # the peak; fast-reid's decays act from epochs 49 and 99.
  assert [(r["what"], r["epoch"]) for r in rows] == [
    ("start", 0),
    ("warmup end", 10),
    ("decay", 49),
    ("decay", 99),
  ]
  assert rows[0]["lr"] == pytest.approx(3.5e-5, rel=1e-6)
  # A run shorter than the first decay lists none.
  short = run_card.lr_milestones(create_lr_schedule(optim, 202), 202, 20 * 202)
  assert [r["what"] for r in short] == ["start", "warmup end"]


def test_card_counts_pretrained_parameters_and_formats(tmp_path):
  config = get_base_config()
  config.train.steps_per_epoch = 5
  variables = {
    "params": {"a": {"kernel": np.zeros((3, 4))}, "b": {"scale": np.zeros(5)}},
    "batch_stats": {"b": {"mean": np.zeros(5)}},
  }
  report = PretrainedReport(
    loaded=("params/a/kernel", "batch_stats/b/mean"),
    left_at_init=("params/b/scale",),
    dropped=(),
    source="/cache/resnet50_ibn_a-d9d0bb7b.pth",
    source_sha256="d9d0bb7b" + "0" * 56,
  )
  mesh = make_mesh()
  card = run_card.build_run_card(
    config,
    config_name="fsaf_market",
    split_sizes={"train": 12936, "query": 3368, "gallery": 15913},
    num_train_ids=751,
    sampler_mode="bot",
    sampler_steps_per_epoch=5,
    schedule=create_lr_schedule(config.optim, 5),
    variables=variables,
    pretrained_report=report,
    mesh=mesh,
  )
  # 12 parameters set from the file (batch statistics are not parameters), 5 at init.
  assert (card["parameters"], card["pretrained_parameters_set"]) == (17, 12)
  assert card["parameters_left_at_init"] == 5
  assert card["pretrained_source"] == "/cache/resnet50_ibn_a-d9d0bb7b.pth"
  assert card["pretrained_source_sha256"] == "d9d0bb7b" + "0" * 56
  assert card["total_steps"] == 600 and card["global_batch"] == 64
  assert card["devices"] == jax.device_count() == card["mesh"]["data"]
  assert card["per_device_batch"] == 64 // jax.device_count()
  text = run_card.format_run_card(card)
  for fragment in (
    "train 12,936, query 3,368, gallery 15,913; 751 train identities",
    "P x K = 16 x 4 = 64, sampler bot",
    "120 x 5 steps = 600 steps",
    "12 parameters set, 5 at init",
    "decay 3.5e-05 (epoch 39, step 195)",
    "from resnet50_ibn_a-d9d0bb7b.pth (sha256 d9d0bb7b00000000)",
  ):
    assert fragment in text, fragment
  path = run_card.write_run_card(card, tmp_path)
  assert json.loads(path.read_text()) == json.loads(json.dumps(card))
