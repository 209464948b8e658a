"""The training loop: data, state, checkpoints, metrics, evaluation.

`train_and_evaluate(config, workdir)` is what `python train.py` runs:

1. `jax.distributed` if the environment asks for it; an empty `config.init.pretrained`
   refused before any data work; the caller's `prepare_data` hook, if any (the demo
   writes its synthetic data there); the dataset made ready
   (`data_setup.prepare_dataset`: TFDS build); the P x K train iterator;
   `model.num_classes` (-1: from the data) and `train.steps_per_epoch` (-1: the
   sampler's epoch, or fast-reid's images // batch) resolved into the config that is
   saved with every checkpoint.
2. Mesh, train state (`config.init.pretrained` or 'scratch'), the jitted data-parallel
   step (state replicated and donated, batch sharded); the run card printed and
   written to `WORKDIR/run_card.json` (`run_card`).
3. Resume: the newest intact checkpoint in `WORKDIR/checkpoints` (train state and iterator
   position: the next batch is the one an uninterrupted run would see), refused if
   its config differs in a field that matters (`checkpoint.RESUMABLE_FIELDS`).
4. Steps until `num_epochs * steps_per_epoch`: a progress bar (loss, lr, images/s);
   every `log_every_steps` the averaged metrics to TensorBoard (`WORKDIR/tb`,
   tensorboardX) and stdout; a checkpoint every `checkpoint_every_steps` and at the
   end; evaluation every `eval_every_epochs` and at the end (one
   `fsaf_jax.evaluation.evaluator.Evaluator`, built with its settings checked before
   the first step: `WORKDIR/eval/step_<N>/metrics.json` and the ranked-list figure,
   `WORKDIR/eval/latest` naming the newest, the metrics to TensorBoard). An `on_step`
   hook, if given, sees every step's batch before it is trained on.
5. SIGTERM / SIGINT: a checkpoint at the next step boundary, then a clean return
   (`TrainResult.signal`).
6. A NaN / inf loss, gradient or parameter norm stops the run with FloatingPointError
   naming the first bad step and the newest checkpoint that restores with finite values.
   Metrics are checked (fetched from the device) only at log, checkpoint and evaluation
   steps, so the step loop stays asynchronous; every step's metrics are kept until then,
   so the reported step is the first bad one and no checkpoint ever holds a non-finite
   state.

Only process 0 writes logs, event files and metrics; every process takes part in
checkpointing and evaluation.

Reliability (`checkpoint_integrity`, `workdir_lock`): the work dir is locked for the
run (a second run on it is refused); every checkpoint gets a checksum manifest once
written, resume skips damaged ones (one warning line), a failed save stops the run at
the next step with one line (`CheckpointSaveError`); `config.json` is written once the
resume check has accepted the run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipelines import errors, train_pipeline
from data_pipelines.datasets import source as source_lib
from fsaf_jax.core import checkpoint_integrity, checkpoint_restore
from fsaf_jax.core.distributed import maybe_initialize_distributed
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.evaluation.evaluator import Evaluator
from fsaf_jax.models import registry
from fsaf_jax.training import checkpoint as checkpoint_lib
from fsaf_jax.training import data_setup, run_card, workdir_lock
from fsaf_jax.training.preemption import StopOnSignal
from fsaf_jax.training.train_state import check_initialisation, create_train_state, init_variables
from fsaf_jax.training.train_step import check_finite, make_train_step

TB_SUBDIR = "tb"
FINITE_KEYS = ("loss", "grad_norm", "param_norm")
EVAL_SPLITS = ("query", "gallery")


@dataclasses.dataclass
class TrainResult:
  """What a call of `train_and_evaluate` did.

  Attributes:
    step: the train state's step at return.
    total_steps: `num_epochs * steps_per_epoch`.
    signal: the signal number that stopped the run early, or None.
    eval: the last evaluation's metrics.json content (None if none ran).
    config: the resolved config (paths, num_classes, steps_per_epoch).
    evaluator: the run's `Evaluator` (its compiled extractor, its `last` result the
      last evaluation's), to score more variables the same way.
  """

  step: int
  total_steps: int
  signal: int | None = None
  eval: dict[str, Any] | None = None
  config: ml_collections.ConfigDict | None = None
  evaluator: Evaluator | None = None


EPOCH_LENGTHS = ("sampler", "images")


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
      f"config.model.num_classes={config.model.num_classes} but {config.input.dataset!r} "
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
        f"{config.input.dataset!r} gives no full batch of P x K = {batch} per epoch "
        f"({num_train_images} training images, {num_train_ids} identities)"
      )
  elif config.train.steps_per_epoch <= 0:
    raise errors.UserError(
      f"config.train.steps_per_epoch must be -1 (from the data, see train.epoch_length) or "
      f"positive, got {config.train.steps_per_epoch}"
    )
  return config


class MetricLogger:
  """Scalars to TensorBoard event files (tensorboardX) and one line to stdout.

  Does nothing on processes other than 0.
  """

  def __init__(self, logdir: epath.Path, enabled: bool):
    self._writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # noqa: PLC0415 (process 0 only)

      self._writer = SummaryWriter(logdir=os.fspath(logdir))

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "train") -> None:
    if self._writer is None:
      return
    for name, value in scalars.items():
      self._writer.add_scalar(f"{prefix}/{name}", value, step)
    self._writer.flush()
    text = " ".join(f"{k}={v:.5g}" for k, v in scalars.items())
    _print(f"[{prefix} step {step}] {text}")

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _print(line: str) -> None:
  """A line to stdout that does not break the progress bar."""
  try:
    import tqdm  # noqa: PLC0415

    tqdm.tqdm.write(line, file=sys.stdout)
  except ImportError:  # pragma: no cover
    print(line, flush=True)
  sys.stdout.flush()


def _progress_bar(total: int, initial: int, enabled: bool):
  import tqdm  # noqa: PLC0415

  return tqdm.tqdm(
    total=total,
    initial=initial,
    disable=not enabled,
    unit="step",
    dynamic_ncols=True,
    desc="train",
    file=sys.stderr,
    mininterval=1.0,
  )


def _fetch_and_check(
  pending: list[tuple[int, dict[str, jax.Array]]], last_good: Callable[[], int | None]
) -> list[dict[str, float]]:
  """Fetches the pending steps' metrics to the host and checks them finite, in order.

  Args:
    pending: (step, metrics on device), in step order.
    last_good: called on a failure: the newest checkpoint step that restores with
      finite values (None: none).

  Raises:
    FloatingPointError: naming the first step with a non-finite loss, gradient or
      parameter norm, and the newest good checkpoint.
  """
  host = [(step, jax.device_get(m)) for step, m in pending]
  for step, metrics in host:
    try:
      check_finite(metrics, step, FINITE_KEYS)
    except FloatingPointError as e:
      good = last_good()
      where = (
        f"the last checkpoint, step {good}, holds the last good state"
        if good is not None
        else "no checkpoint was saved"
      )
      raise FloatingPointError(f"{e} ({where})") from None
  return [m for _, m in host]


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


# `prepare_data(config, workdir) -> config`: runs in the locked work dir before the
# dataset is built, on every process; returns the config the run goes on with.
PrepareData = Callable[[ml_collections.ConfigDict, epath.Path], ml_collections.ConfigDict]
# `on_step(step, batch)`: the global batch (`TrainIterator`'s dict of `jax.Array`s) the
# state's step `step` trains on, before the step runs (a resumed run sees again the steps
# after its last checkpoint).
OnStep = Callable[[int, dict[str, jax.Array]], None]


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  config_name: str | None = None,
  prepare_data: PrepareData | None = None,
  on_step: OnStep | None = None,
) -> TrainResult:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates.

  The work dir is locked for the run (`workdir_lock`); see `_train_and_evaluate`.

  Raises:
    workdir_lock.WorkdirLockedError: another run owns `workdir` (its pid is named).
    errors.UserError: `workdir` cannot be created or written, or a checkpoint setting
      is out of range (`checkpoint_every_steps`, `keep_checkpoints` < 1).
  """
  checkpoint_interval(config)  # bad settings refused before anything is written
  checkpoint_lib.check_keep(config.train.keep_checkpoints)
  check_initialisation(config.init)  # an empty init.pretrained: before any data work
  maybe_initialize_distributed()
  workdir = epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))
  is_main = jax.process_index() == 0
  if is_main:
    errors.check_output_dir(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.WorkdirLock(workdir, enabled=is_main):
    return _train_and_evaluate(
      config, workdir, config_name=config_name, prepare_data=prepare_data, on_step=on_step
    )


def _train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  config_name: str | None = None,
  prepare_data: PrepareData | None = None,
  on_step: OnStep | None = None,
) -> TrainResult:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates.

  Args:
    config: the run config (`configs/base.py` schema).
    workdir: work directory: `checkpoints/`, `tb/`, `eval/step_<N>/`, `data/` (when
      the data paths are left empty), `config.json`, `train.lock`.
    config_name: the config's name (e.g. 'fsaf_market'), recorded with the metrics.
    prepare_data: called with (config, workdir) before the dataset is built; its
      result is the run's config (e.g. the demo writes its synthetic data).
    on_step: called with (step, batch) before each step trains on `batch` (`OnStep`).

  Returns:
    A `TrainResult`.

  Raises:
    checkpoint_restore.IncompatibleCheckpointError: `workdir` holds a checkpoint of another
      config.
    FloatingPointError: a non-finite loss / gradient / parameter norm (first bad
      step named, and the newest checkpoint that restores with finite values).
    checkpoint_integrity.CheckpointSaveError: a checkpoint could not be written (the
      partial one is removed).
    checkpoint_integrity.DamagedCheckpointError: every checkpoint in `workdir` is
      damaged.
    ValueError: inconsistent config (num_classes, P x K vs devices, ...).
  """
  workdir = epath.Path(workdir)
  is_main = jax.process_index() == 0
  if prepare_data is not None:
    config = prepare_data(config, workdir)
  config = data_setup.prepare_dataset(config, workdir)
  dataset, data_dir = config.input.dataset, config.input.data_dir
  num_train_ids = source_lib.num_train_identities(dataset, data_dir)
  train_source = source_lib.load_source(dataset, "train", data_dir)
  person_ids, _ = train_pipeline.read_labels(train_source)
  mesh = make_mesh()
  train_iter = train_pipeline.create_train_iterator(
    train_source,
    config,
    mesh,
    seed=int(config.seed),
    num_train_ids=num_train_ids,
    person_ids=person_ids,
  )
  config = resolve_config(
    config,
    num_train_ids,
    sampler_steps_per_epoch=train_iter.batches_per_epoch,
    num_train_images=len(train_source),
  )
  # Built before any training step: bad eval settings fail here, not at the first eval.
  evaluator = Evaluator(
    config, num_classes=num_train_ids, mesh=mesh, data_dir=data_dir, config_name=config_name
  )
  steps_per_epoch = int(config.train.steps_per_epoch)
  total_steps = int(config.train.num_epochs) * steps_per_epoch
  image_size = tuple(int(s) for s in config.input.image_size)
  global_batch = config.input.num_identities * config.input.num_instances

  model = registry.create_model(config.model, num_train_ids)
  rng = jax.random.key(config.seed)
  variables, pretrained_report = init_variables(config, model, rng, image_size, mesh)
  state = create_train_state(
    config,
    model,
    rng,
    num_train_ids,
    image_size,
    steps_per_epoch=steps_per_epoch,
    mesh=mesh,
    variables=variables,
  )
  card = run_card.build_run_card(
    config,
    config_name=config_name,
    split_sizes={
      "train": len(train_source),
      **{split: len(source_lib.load_source(dataset, split, data_dir)) for split in EVAL_SPLITS},
    },
    num_train_ids=num_train_ids,
    sampler_mode=train_iter.sampler.mode,
    sampler_steps_per_epoch=train_iter.batches_per_epoch,
    schedule=state.lr_schedule,
    variables=variables,
    pretrained_report=pretrained_report,
    mesh=mesh,
  )
  if is_main:
    _print(run_card.format_run_card(card))
    run_card.write_run_card(card, workdir)
  ckpt_every = checkpoint_interval(config)
  manager = checkpoint_lib.create_checkpoint_manager(workdir, config.train.keep_checkpoints)
  state = checkpoint_lib.restore_checkpoint(manager, state, train_iter, config)
  if is_main:  # the run is accepted: config.json describes the checkpoints beside it
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
  saves = checkpoint_integrity.SaveMonitor(manager)
  start_step = int(state.step)
  if start_step:
    logging.info("Resuming from step %d of %d", start_step, total_steps)
  train_step = make_train_step(model, config.loss, mesh)

  log_every = max(1, int(config.train.log_every_steps))
  eval_every = int(config.train.eval_every_epochs) * steps_per_epoch

  def save(step):
    saves.finish()  # the previous save is complete and checked before the next one
    if checkpoint_lib.save_checkpoint(manager, step, state, train_iter, config):
      saves.started(step)

  def last_good():
    try:
      saves.finish()
    except checkpoint_integrity.CheckpointSaveError as e:
      logging.error("%s", e)
    return checkpoint_restore.newest_restorable_step(manager.directory)

  def evaluate(step):
    metrics = evaluator.run(state.variables, step=step)
    evaluator.print_table()
    result = evaluator.write(workdir)
    logger.write(step, metrics, prefix="eval")
    return result

  logger = MetricLogger(workdir / TB_SUBDIR, is_main)
  bar = _progress_bar(total_steps, start_step, is_main)
  result = TrainResult(step=start_step, total_steps=total_steps, config=config, evaluator=evaluator)
  pending: list[tuple[int, dict[str, jax.Array]]] = []  # not yet fetched / checked
  window_metrics: list[dict[str, float]] = []  # checked, since the last log line
  step = start_step
  trained = False
  try:
    with StopOnSignal() as stop:
      window_start, window_steps = None, 0
      while step < total_steps:
        # Multi-process: agree on stopping at log steps only (it is a collective).
        if (jax.process_count() == 1 or step % log_every == 0) and stop.agreed():
          break
        batch = next(train_iter)
        if on_step is not None:
          on_step(step + 1, batch)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        saves.poll()  # a failed save stops the run here, not at the next one
        if window_start is None:  # the first step compiles: time from its end
          jax.block_until_ready(metrics)
          window_start, window_steps = time.perf_counter(), 0
        else:
          window_steps += 1
        bar.update(1)

        at_eval = bool(eval_every) and step % eval_every == 0 and step < total_steps
        at_ckpt = step % ckpt_every == 0 or step == total_steps
        if step % log_every == 0 or at_ckpt or at_eval:
          window_metrics.extend(_fetch_and_check(pending, last_good))
          pending.clear()
          if step % log_every == 0 or step == total_steps:
            means = {k: float(np.mean([m[k] for m in window_metrics])) for k in window_metrics[-1]}
            window_metrics.clear()
            elapsed = time.perf_counter() - window_start
            if window_steps and elapsed > 0:
              means["images_per_s"] = window_steps * global_batch / elapsed
              means["steps_per_s"] = window_steps / elapsed
            means["epoch"] = step / steps_per_epoch
            logger.write(step, means)
            postfix = {"loss": f"{means['loss']:.4f}", "lr": f"{means['lr']:.3g}"}
            if "images_per_s" in means:
              postfix["img_s"] = f"{means['images_per_s']:.1f}"
            bar.set_postfix(postfix, refresh=False)
            window_start, window_steps = time.perf_counter(), 0
        if at_ckpt:
          save(step)
        if at_eval:
          result.eval = evaluate(step)
          window_start, window_steps = time.perf_counter(), 0

      if step < total_steps:  # stopped by a signal
        if pending:
          _fetch_and_check(pending, last_good)
          pending.clear()
        save(step)
        result.signal = stop.signum
        logging.warning(
          "Stopped by signal %s at step %d of %d; checkpoint saved in %s. Run the same "
          "command again to resume.",
          stop.signum,
          step,
          total_steps,
          manager.directory,
        )
    trained = True
  finally:
    bar.close()
    try:
      saves.finish()  # the last checkpoint is complete and checked, whatever happened
    except checkpoint_integrity.CheckpointSaveError as e:
      if not trained:  # another exception is on its way: it stays the one raised
        logging.error("%s", e)
      else:
        trained = False
        raise
    finally:
      train_iter.close()
      if not trained:  # an exception is on its way
        saves.close()
        logger.close()
        manager.close()
  result.step = step

  try:
    if result.signal is None:
      # Trained to the end: evaluate (also when a finished run is started again).
      save(step)
      saves.finish()
      result.eval = evaluate(step)
  finally:
    saves.close()
    logger.close()
    manager.close()
  return result
