"""Everything a training run does before its first step.

`check_settings(config)` refuses a bad value of any field (loop, initialisation, loss,
evaluation, model, the list of training sets) before anything is written or any data
work; `setup_run(config, workdir)` then makes the training sets ready (one, or the
union of `config.input.datasets`: `data_setup`), builds the P x K train iterator over
their training images, resolves `model.num_classes` and `train.steps_per_epoch` from
the data (`resolve_config`), builds the evaluators (one per evaluation set, their data
built; by default the first training set), the model, the initial train state
(`config.init.pretrained` or 'scratch') and the run card (printed by process 0; the
training loop writes it to
`WORKDIR/run_card.json` once a resume is accepted, so a refused run leaves the work
dir's card as it was).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from etils import epath
from flax import linen as nn
from jax.sharding import Mesh

from data_pipelines import train_pipeline
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import errors
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation.evaluator import Evaluator, build_evaluators
from fsaf_jax.evaluation.settings import EvalSettings
from fsaf_jax.losses.registry import check_loss_config
from fsaf_jax.models import registry
from fsaf_jax.models.pretrained import PretrainedReport
from fsaf_jax.training import checkpoint as checkpoint_lib
from fsaf_jax.training import data_setup, run_card
from fsaf_jax.training.train_state import (
  TrainState,
  check_initialisation,
  create_train_state,
  init_variables,
)
from fsaf_jax.training.writers import console_line

# `prepare_data(config, workdir) -> config`: runs in the locked work dir before the
# dataset is built, on every process; returns the config the run goes on with.
PrepareData = Callable[[ml_collections.ConfigDict, epath.Path], ml_collections.ConfigDict]


@dataclasses.dataclass
class Run:
  """A training run ready for its first step (before any checkpoint is restored).

  Attributes:
    config: the resolved config (absolute data paths, `model.num_classes`,
      `train.steps_per_epoch`).
    mesh: the device mesh ('data' axis).
    train_iter: the P x K train iterator (`train_pipeline.TrainIterator`).
    model: the model (`registry.create_model`).
    state: the initial train state (replicated over `mesh`).
    evaluators: the run's evaluators, one per evaluation set (`build_evaluators`).
    card: the run card (`run_card.build_run_card`).
  """

  config: ml_collections.ConfigDict
  mesh: Mesh
  train_iter: Any
  model: nn.Module
  state: TrainState
  evaluators: list[Evaluator]
  card: dict[str, Any]

  @property
  def steps_per_epoch(self) -> int:
    return int(self.config.train.steps_per_epoch)

  @property
  def total_steps(self) -> int:
    return int(self.config.train.num_epochs) * self.steps_per_epoch

  @property
  def global_batch(self) -> int:
    return int(self.config.input.num_identities * self.config.input.num_instances)


EPOCH_LENGTHS = ("sampler", "images")
EVAL_SPLITS = ("query", "gallery")


def resolve_config(
  config: ml_collections.ConfigDict,
  num_train_ids: int,
  *,
  sampler_steps_per_epoch: int,
  num_train_images: int,
) -> ml_collections.ConfigDict:
  """A copy with `model.num_classes` and `train.steps_per_epoch` taken from the data.

  Args:
    config: the run config (data paths already resolved).
    num_train_ids: training identities of the dataset.
    sampler_steps_per_epoch: batches of one epoch of the training sampler
      (`PKSampler.batches_per_epoch`).
    num_train_images: images of the training split.

  Returns:
    The config with `model.num_classes = num_train_ids` and, if it was -1,
    `train.steps_per_epoch` = the sampler's epoch (`train.epoch_length='sampler'`) or
    `num_train_images // (P * K)` ('images', fast-reid's).

  Raises:
    ValueError: `model.num_classes` is positive and differs from `num_train_ids`, an
      unknown `train.epoch_length`, or a non-positive `train.steps_per_epoch`.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if config.model.num_classes not in (-1, num_train_ids):
    raise errors.UserError(
      f"config.model.num_classes={config.model.num_classes} but {training_data_name(config)} "
      f"in {config.input.data_dir} has {num_train_ids} training identities: set "
      "config.model.num_classes=-1 (take it from the data) or fix it"
    )
  config.model.num_classes = num_train_ids
  if config.train.epoch_length not in EPOCH_LENGTHS:
    raise errors.UserError(
      f"config.train.epoch_length={config.train.epoch_length!r}: must be one of {EPOCH_LENGTHS}"
    )
  if config.train.steps_per_epoch == -1:
    batch = config.input.num_identities * config.input.num_instances
    if config.train.epoch_length == "sampler":
      config.train.steps_per_epoch = int(sampler_steps_per_epoch)
    else:
      config.train.steps_per_epoch = num_train_images // batch
    if config.train.steps_per_epoch <= 0:
      raise errors.UserError(
        f"{training_data_name(config)} gives no full batch of P x K = {batch} per epoch "
        f"({num_train_images} training images, {num_train_ids} identities)"
      )
  elif config.train.steps_per_epoch <= 0:
    raise errors.UserError(
      f"config.train.steps_per_epoch must be -1 (from the data, see train.epoch_length) or "
      f"positive, got {config.train.steps_per_epoch}"
    )
  return config


def training_data_name(config: ml_collections.ConfigDict) -> str:
  """The training data for messages: 'market1501', or 'market1501 + dukemtmc_reid'."""
  names = " + ".join(config.input.datasets) or config.input.dataset
  return f"{names!r}" + (" (combineall)" if config.input.combineall else "")


def checkpoint_interval(config: ml_collections.ConfigDict) -> int:
  """`config.train.checkpoint_every_steps`, checked: a positive number of steps.

  Raises:
    errors.UserError: zero or negative (0 does not mean 'never': a checkpoint is also
      saved at the end and on SIGTERM, so use a large value for few checkpoints).
  """
  every = int(config.train.checkpoint_every_steps)
  if every < 1:
    raise errors.UserError(
      f"config.train.checkpoint_every_steps={every}: must be >= 1 (steps between "
      "checkpoints; one is also saved at the end and on SIGTERM / Ctrl-C)",
      hint="for few checkpoints use a large value, e.g. "
      "--config.train.checkpoint_every_steps=100000",
    )
  return every


def check_settings(config: ml_collections.ConfigDict) -> None:
  """Refuses a bad value of any config field before anything is written or any data work.

  Raises:
    errors.UserError: `checkpoint_every_steps` or `keep_checkpoints` < 1, a bad list
      of training sets (`data_setup.training_sets`), an
      `input.image_size` that is not two positive integers, a loop or loader setting
      out of range (`check_loop_and_loader`), an empty `init.pretrained` (the message
      names the IBN-Net release and the convert command), a bad `config.loss` field
      (each active term checks its own, `losses.registry.check_loss_config`), a bad
      `config.eval` field (`EvalSettings`) or a bad `config.model` field (the model
      built abstractly, `models.registry.check_model_config`).
  """
  checkpoint_interval(config)
  checkpoint_lib.check_keep(config.train.keep_checkpoints)
  data_setup.training_sets(config)
  check_image_size(config.input.image_size)
  check_loop_and_loader(config)
  check_initialisation(config.init)
  check_loss_config(config.loss)
  EvalSettings.from_config(config)
  registry.check_model_config(config.model, config.input.image_size)


def check_loop_and_loader(config: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError for `train.num_epochs` < 1, `train.eval_every_epochs` < 0
  (a negative interval would evaluate every epoch), `train.log_every_steps` < 1,
  `input.num_workers` < 0, or K (`input.num_instances`) < 2 with a triplet loss (no
  positive pair to mine)."""
  if int(config.train.num_epochs) < 1:
    raise errors.UserError(f"config.train.num_epochs={config.train.num_epochs}: must be >= 1")
  if int(config.train.eval_every_epochs) < 0:
    raise errors.UserError(
      f"config.train.eval_every_epochs={config.train.eval_every_epochs}: must be >= 0 "
      "(0: evaluate only at the end)"
    )
  if int(config.train.log_every_steps) < 1:
    raise errors.UserError(
      f"config.train.log_every_steps={config.train.log_every_steps}: must be >= 1"
    )
  if int(config.input.num_workers) < 0:
    raise errors.UserError(
      f"config.input.num_workers={config.input.num_workers}: must be >= 0 (0 decodes in "
      "the training process)"
    )
  if float(config.loss.triplet_weight) > 0 and int(config.input.num_instances) < 2:
    raise errors.UserError(
      f"config.input.num_instances={config.input.num_instances}: the triplet loss needs "
      "K >= 2 images per identity in a batch (a positive pair)",
      hint="set --config.input.num_instances=4 (the recipe's K), or --config.loss.triplet_weight=0",
    )


def check_image_size(image_size: Any) -> None:
  """Raises errors.UserError unless `image_size` (config.input.image_size) is (H, W),
  two positive integers."""
  try:
    ok = len(image_size) == 2 and all(int(s) == s and s >= 1 for s in image_size)
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise errors.UserError(
      f"config.input.image_size={image_size!r}: must be (height, width), two positive integers",
      hint="e.g. --config.input.image_size='(256, 128)'",
    )


def initial_variables(
  config: ml_collections.ConfigDict, num_classes: int, mesh: Mesh
) -> tuple[nn.Module, Any, PretrainedReport | None]:
  """The model of a run of `config` and the variables it starts from.

  Args:
    config: the run config (`model`, `seed`, `init`, `input.image_size`).
    num_classes: training identities (the classifier width).
    mesh: the device mesh the variables are initialised on.

  Returns:
    (model, {'params', 'batch_stats'} on the mesh, the pretrained-loading report or
    None): `train_state.init_variables` with the run's seed.
  """
  model = registry.create_model(config.model, num_classes)
  image_size = tuple(int(s) for s in config.input.image_size)
  variables, report = init_variables(config, model, jax.random.key(config.seed), image_size, mesh)
  return model, variables, report


def _train_input(
  config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[data_setup.TrainingData, Any]:
  """The ready training sets' images (`data_setup.load_training_data`: one set, or the
  union of several) and the P x K train iterator over them on `mesh`."""
  data = data_setup.load_training_data(config)
  train_iter = train_pipeline.create_train_iterator(
    data.source,
    config,
    mesh,
    seed=int(config.seed),
    num_train_ids=data.num_classes,
    person_ids=data.person_ids,
  )
  return data, train_iter


def _split_sizes(config: ml_collections.ConfigDict, num_train_images: int) -> dict[str, int]:
  """{'train': images trained on, 'query' / 'gallery': the training set's own test splits}
  (the evaluation sets may be others)."""
  return {
    "train": num_train_images,
    **{
      split: len(source_lib.load_source(config.input.dataset, split, config.input.data_dir))
      for split in EVAL_SPLITS
    },
  }


def setup_run(
  config: ml_collections.ConfigDict,
  workdir: epath.Path,
  *,
  config_name: str | None = None,
  prepare_data: PrepareData | None = None,
) -> Run:
  """Makes the data ready and builds what the first training step needs (module doc).

  Args:
    config: the run config (`configs/base.py` schema).
    workdir: the (locked) work directory.
    config_name: the config's name, recorded in the run card and the metrics.
    prepare_data: called with (config, workdir) before the dataset is built; its
      result is the run's config (e.g. the demo writes its synthetic data).

  Returns:
    A `Run`.

  Raises:
    errors.UserError: inconsistent settings (num_classes, epoch length, P x K vs
      devices or identities, eval settings).
    FileNotFoundError: the dataset cannot be found or built.
  """
  is_main = jax.process_index() == 0
  if prepare_data is not None:
    config = prepare_data(config, workdir)
  config = data_setup.prepare_dataset(config, workdir)
  mesh = make_mesh()
  data, train_iter = _train_input(config, mesh)
  num_train_ids, train_source = data.num_classes, data.source
  config = resolve_config(
    config,
    num_train_ids,
    sampler_steps_per_epoch=train_iter.batches_per_epoch,
    num_train_images=len(train_source),
  )
  model, variables, pretrained_report = initial_variables(config, num_train_ids, mesh)
  # Built before any training step, on the run's model: a set without positives fails
  # here, not at the first evaluation.
  evaluators = build_evaluators(model, config, mesh=mesh, config_name=config_name)
  steps_per_epoch = int(config.train.steps_per_epoch)
  image_size = tuple(int(s) for s in config.input.image_size)
  state = create_train_state(
    config,
    model,
    jax.random.key(config.seed),
    num_train_ids,
    image_size,
    steps_per_epoch=steps_per_epoch,
    mesh=mesh,
    variables=variables,
  )
  card = run_card.build_run_card(
    config,
    config_name=config_name,
    split_sizes=_split_sizes(config, len(train_source)),
    num_train_ids=num_train_ids,
    sampler_mode=train_iter.sampler.mode,
    sampler_steps_per_epoch=train_iter.batches_per_epoch,
    schedule=state.lr_schedule,
    variables=variables,
    pretrained_report=pretrained_report,
    mesh=mesh,
    training_sets=data.sets,
  )
  if is_main:  # written to WORKDIR/run_card.json once the run is accepted (`train_loop`)
    console_line(run_card.format_run_card(card))
  return Run(config, mesh, train_iter, model, state, evaluators, card)
