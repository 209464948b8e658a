"""The configs that name a published row reproduce that row's recipe.

Each published config is checked against the recipe written out independently here
(BoT's reid-strong-baseline defaults, fast-reid's Base-bagtricks, the paper's model),
its lr at every step of a Market-1501-length run against BoT's formula, and its header
against the figures it names.
"""

import importlib
import json
import pathlib

import jax
import numpy as np
import pytest

from data_pipelines.pk_sampler import bot_batches_per_epoch
from fsaf_jax.models.pretrained import MissingPretrainedError
from fsaf_jax.training import train_loop
from fsaf_jax.training.optimizer import create_lr_schedule
from tests.reference.market_shape import market_shaped_counts

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"

# config (file[:argument]): (target figures as written in the header, last stride, MHSA
# stages, ECA, fusion, centre-loss weight, lr schedule)
PUBLISHED = {
  "fsaf.py:market,baseline": (("71.7", "82.4"), 2, (), "none", "none", 0.0, "bot"),
  "fsaf.py:market,baseline_sam": (("76.3", "89.6"), 2, (4, 5), "stage", "none", 0.0, "bot"),
  "fsaf.py:market,fsaf": (
    ("81.5", "92.7", "82.4", "94.8"),
    2,
    (4, 5),
    "stage",
    "concat",
    0.0,
    "bot",
  ),
  "fsaf.py:duke,fsaf": (("65.9", "84.5"), 2, (4, 5), "stage", "concat", 0.0, "bot"),
  "bot_r50_ibn_a.py": (("95.0", "88.2"), 1, (), "none", "none", 5e-4, "bot"),
  "fastreid_bot_r50_ibn.py": (("94.9", "87.6"), 1, (), "none", "none", 0.0, "fastreid"),
}
# The former one-file-per-row names, kept as aliases of configs/fsaf.py rows.
ALIASES = {
  "baseline": "fsaf.py:market,baseline",
  "baseline_sam": "fsaf.py:market,baseline_sam",
  "fsaf_market": "fsaf.py:market,fsaf",
  "fsaf_duke": "fsaf.py:duke,fsaf",
}
DATASETS = {"market": "market1501", "duke": "dukemtmc_reid"}


def _config(spec):
  """`get_config` of 'file.py[:argument]' in configs/, as --config=configs/<spec> calls it."""
  file, _, arg = spec.partition(":")
  module = importlib.import_module(f"configs.{file.removesuffix('.py')}")
  return module.get_config(arg) if arg else module.get_config()


def _bot_lr(epoch: int, base=3.5e-4, warmup=10, factor=0.01, milestones=(40, 70)) -> float:
  """reid-strong-baseline's WarmupMultiStepLR, stepped at each epoch start (1-based)."""
  last_epoch = epoch + 1
  alpha = last_epoch / warmup if last_epoch < warmup else 1.0
  return base * (factor * (1 - alpha) + alpha) * 0.1 ** sum(m <= last_epoch for m in milestones)


def test_every_config_file_is_covered():
  names = {p.stem for p in CONFIGS.glob("*.py")} - {"__init__", "base", "tiny", "demo"}
  assert names == {spec.split(".py")[0] for spec in PUBLISHED} | set(ALIASES)
  # Every argument of configs/fsaf.py is a published row or one the paper does not have.
  from configs import fsaf

  published = {spec.split(":")[1] for spec in PUBLISHED if spec.startswith("fsaf.py:")}
  assert set(fsaf.ARGUMENTS) == published | {"duke,baseline", "duke,baseline_sam"}


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_former_names_are_their_rows(alias):
  assert _config(alias + ".py").to_dict() == _config(ALIASES[alias]).to_dict()
  header = (CONFIGS / f"{alias}.py").read_text().split('"""')[1]
  assert f"configs/{ALIASES[alias]}" in header


@pytest.mark.parametrize("arg", [None, "", "market", "market,fsf", "msmt,fsaf", "fsaf,market"])
def test_a_bad_fsaf_argument_names_the_valid_ones(arg):
  from configs import fsaf

  with pytest.raises(ValueError) as e:
    fsaf.get_config(arg)
  message = str(e.value)
  assert "\n" not in message and "DATASET,VARIANT" in message
  for valid in ("market,baseline", "market,baseline_sam", "market,fsaf", "duke,fsaf"):
    assert f"configs/fsaf.py:{valid}" in message


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_config_is_the_recipe(name):
  figures, last_stride, mhsa, eca, fusion, center, schedule = PUBLISHED[name]
  c = _config(name)
  if name.startswith("fsaf.py:"):  # the dataset is the argument's, not the base default
    assert c.input.dataset == DATASETS[name.split(":")[1].split(",")[0]]
  else:
    assert c.input.dataset == "market1501"
  m = c.model
  # ResNet50-IBN-a at 256x128 with a BNNeck, the recipe's variant of it.
  assert tuple(m.stage_sizes) == (3, 4, 6, 3) and tuple(m.widths) == (64, 128, 256, 512)
  assert tuple(m.ibn_stages) == (2, 3, 4) and tuple(c.input.image_size) == (256, 128)
  assert (m.last_stride, tuple(m.mhsa_stages), m.eca_placement, m.fusion) == (
    last_stride,
    mhsa,
    eca,
    fusion,
  )
  # ImageNet weights are required (an empty field is refused at startup).
  assert c.init.pretrained == ""
  # BoT's data and losses (fast-reid's Base-bagtricks has the same).
  i = c.input
  assert (i.num_identities, i.num_instances, i.sampler) == (16, 4, "bot")
  assert (i.flip_prob, i.pad, i.erasing_prob) == (0.5, 10, 0.5)
  assert (c.loss.ce_weight, c.loss.label_smoothing) == (1.0, 0.1)
  assert (c.loss.triplet_weight, c.loss.triplet_margin) == (1.0, 0.3)
  assert c.loss.center_weight == center
  o = c.optim
  assert (o.base_lr, o.b1, o.b2, o.gamma) == (3.5e-4, 0.9, 0.999, 0.1)
  assert o.weight_decay == o.weight_decay_bias == o.weight_decay_norm == 5e-4
  assert o.lr_schedule == schedule and c.train.num_epochs == 120
  if schedule == "bot":
    assert (o.warmup_epochs, o.warmup_factor, tuple(o.milestones)) == (10, 0.01, (40, 70))
    assert c.train.epoch_length == "sampler"
  else:  # fast-reid: 2,000 warmup iterations from 0.1, (40, 90), 202-iteration epochs
    assert (o.warmup_iters, o.warmup_factor, tuple(o.milestones)) == (2000, 0.1, (40, 90))
    assert c.train.epoch_length == "images"
  if center:
    assert c.loss.center_lr == 0.5
  # The header names the figures, the run command with the pretrained file, the steps.
  header = (CONFIGS / name.split(":")[0]).read_text().split('"""')[1]
  for figure in figures:
    assert figure in header, figure
  assert f"--config=configs/{name} " in header
  assert "--config.init.pretrained=" in header
  assert "Steps:" in header and "not ours" in header


def test_baseline_lr_at_every_step_of_a_market_run_is_bots():
  # A Market-1501-shaped training split: 751 identities, 12,936 images, 2 to 72 each.
  counts = market_shaped_counts()
  c = _config("fsaf.py:market,baseline")
  spe = bot_batches_per_epoch(counts, c.input.num_identities, c.input.num_instances)
  assert 175 <= spe <= 205
  total = c.train.num_epochs * spe
  steps = np.arange(total)
  got = np.asarray(jax.jit(jax.vmap(create_lr_schedule(c.optim, int(spe))))(steps))
  want = np.array([_bot_lr(int(s) // spe) for s in steps])
  np.testing.assert_allclose(got, want, rtol=2e-6)
  # The landmarks of BoT's trainer: epoch 0 at 3.815e-5, full from 9, x0.1 at 39 and 69.
  assert got[0] == pytest.approx(3.815e-5, rel=1e-6)
  assert got[9 * spe - 1] < 3.5e-4 and got[9 * spe] == pytest.approx(3.5e-4, rel=1e-6)
  assert got[39 * spe - 1] == pytest.approx(3.5e-4, rel=1e-6)
  assert got[39 * spe] == pytest.approx(3.5e-5, rel=1e-6)
  assert got[69 * spe] == pytest.approx(3.5e-6, rel=1e-6)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_full_size_config_without_pretrained_stops_before_any_data_work(name, tmp_path):
  c = _config(name)
  c.input.data_dir = str(tmp_path / "tfds")
  c.input.manual_dir = str(tmp_path / "missing_dataset")
  with pytest.raises(MissingPretrainedError) as e:
    train_loop.train_and_evaluate(c, tmp_path / "work", config_name=name)
  assert "resnet50_ibn_a-d9d0bb7b.pth" in e.value.hint
  assert "--config.init.pretrained=imagenet" in e.value.hint
  assert not (tmp_path / "tfds").exists()
  assert not (tmp_path / "work" / "data").exists()
  assert not (tmp_path / "work" / "config.json").exists()


@pytest.mark.slow
def test_full_size_config_trains_from_scratch_on_purpose(data_root, tmp_path):
  c = _config("fsaf.py:market,baseline")  # ResNet50-IBN-a, full widths
  c.init.pretrained = "scratch"
  c.input.data_dir = str(data_root / "tfds")
  c.input.manual_dir = str(data_root / "synthetic")
  c.input.image_size = (64, 32)
  c.input.num_identities, c.input.num_instances = 4, 2
  c.input.num_workers, c.input.eval_batch_size = 0, 16
  c.train.num_epochs, c.train.steps_per_epoch, c.train.eval_every_epochs = 1, 2, 0
  c.eval.num_figure_queries = 1
  result = train_loop.train_and_evaluate(c, tmp_path / "work", config_name="baseline")
  assert result.step == 2 and result.eval is not None
  card = json.loads((tmp_path / "work" / "run_card.json").read_text())
  assert card["pretrained"] == "scratch" and card["pretrained_parameters_set"] == 0
  assert card["parameters_left_at_init"] == card["parameters"] > 23_000_000
  assert card["total_steps"] == 2 and card["sampler"] == "bot"
