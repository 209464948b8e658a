"""The training loop: data, state, checkpoints, metrics, evaluation.

`train_and_evaluate(config, workdir)` is what `python train.py` runs:

1. Bad loop or initialisation settings refused before anything is written
   (`setup.check_settings`); `jax.distributed` if the environment asks for it; the
   work dir locked.
2. `setup.setup_run`: the caller's `prepare_data` hook, if any (the demo writes its
   synthetic data there), the dataset made ready, the P x K train iterator, the
   config resolved from the data (`model.num_classes`, `train.steps_per_epoch`), the
   evaluators (settings checked before any step), the model, the initial train state
   and the run card. Then the jitted data-parallel step (state replicated and donated,
   batch sharded).
3. Resume: the newest intact checkpoint in `WORKDIR/checkpoints` (train state and iterator
   position: the next batch is the one an uninterrupted run would see), refused if
   its config differs in a field that matters (`checkpoint.RESUMABLE_FIELDS`).
4. Steps until `num_epochs * steps_per_epoch`: a progress bar (loss, lr, images/s);
   every `log_every_steps` the averaged metrics to TensorBoard (`WORKDIR/tb`) and
   stdout (`writers`); a checkpoint every `checkpoint_every_steps` and at the
   end; evaluation every `eval_every_epochs` and at the end (the evaluators of
   `fsaf_jax.evaluation.evaluator.build_evaluators`, one per evaluation set, built with
   their settings checked before the first step: `WORKDIR/eval/step_<N>/[<set>/]`
   metrics.json and figures, `WORKDIR/eval/latest` naming the newest, the metrics to
   TensorBoard, prefixed by the set when `config.eval.datasets` lists sets). An `on_step`
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
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipelines import errors
from fsaf_jax.core import checkpoint_integrity, checkpoint_restore
from fsaf_jax.core.distributed import maybe_initialize_distributed
from fsaf_jax.evaluation import writers as eval_writers
from fsaf_jax.evaluation.evaluator import EvalResult, Evaluator, run_evaluators
from fsaf_jax.training import checkpoint as checkpoint_lib
from fsaf_jax.training import run_card, setup, workdir_lock
from fsaf_jax.training.preemption import StopOnSignal
from fsaf_jax.training.setup import check_settings, checkpoint_interval, setup_run
from fsaf_jax.training.train_step import check_finite, make_train_step
from fsaf_jax.training.writers import MetricLogger, progress_bar

TB_SUBDIR = "tb"
FINITE_KEYS = ("loss", "grad_norm", "param_norm")


@dataclasses.dataclass
class TrainResult:
  """What a call of `train_and_evaluate` did.

  Attributes:
    step: the train state's step at return.
    total_steps: `num_epochs * steps_per_epoch`.
    signal: the signal number that stopped the run early, or None.
    eval: the last evaluation's metrics.json content of the first evaluation set
      (None if none ran); `evals`: every set's.
    config: the resolved config (paths, num_classes, steps_per_epoch).
    evaluators: the run's evaluators (their compiled extractors), to score more
      variables the same way; `results`: the last evaluation's `EvalResult`s.
  """

  step: int
  total_steps: int
  signal: int | None = None
  eval: dict[str, Any] | None = None
  config: ml_collections.ConfigDict | None = None
  evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  evaluators: list[Evaluator] = dataclasses.field(default_factory=list)
  results: list[EvalResult] = dataclasses.field(default_factory=list)


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


# `on_step(step, batch)`: the global batch (`TrainIterator`'s dict of `jax.Array`s) the
# state's step `step` trains on, before the step runs (a resumed run sees again the steps
# after its last checkpoint).
OnStep = Callable[[int, dict[str, jax.Array]], None]


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  config_name: str | None = None,
  prepare_data: setup.PrepareData | None = None,
  on_step: OnStep | None = None,
) -> TrainResult:
  """Trains (resuming from `workdir` if it holds a checkpoint) and evaluates.

  Args:
    config: the run config (`configs/base.py` schema).
    workdir: work directory, locked for the run (`workdir_lock`): `checkpoints/`,
      `tb/`, `eval/step_<N>/`, `data/` (when the data paths are left empty),
      `config.json`, `run_card.json`, `train.lock`.
    config_name: the config's name (e.g. 'fsaf_market'), recorded with the metrics.
    prepare_data: called with (config, workdir) before the dataset is built; its
      result is the run's config (e.g. the demo writes its synthetic data).
    on_step: called with (step, batch) before each step trains on `batch` (`OnStep`).

  Returns:
    A `TrainResult`.

  Raises:
    workdir_lock.WorkdirLockedError: another run owns `workdir` (its pid is named).
    checkpoint_restore.IncompatibleCheckpointError: `workdir` holds checkpoints of
      another config (`checkpoint.check_workdir_config`: before any data work).
    errors.UserError: `workdir` cannot be created or written, or a setting is out of
      range or inconsistent (checkpoint interval, P x K vs devices, eval settings, ...).
    What `_train` raises (an incompatible or damaged checkpoint, a NaN, a failed save).
  """
  check_settings(config)  # refused before anything is written or any data work
  maybe_initialize_distributed()
  workdir = epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))
  is_main = jax.process_index() == 0
  if is_main:
    errors.check_output_dir(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
  with workdir_lock.WorkdirLock(workdir, enabled=is_main):
    checkpoint_lib.check_workdir_config(workdir, config)  # before any data work
    run = setup_run(config, workdir, config_name=config_name, prepare_data=prepare_data)
    return _train(run, workdir, on_step)


def _train(run: setup.Run, workdir: epath.Path, on_step: OnStep | None) -> TrainResult:
  """Resumes `run` from `workdir`'s newest intact checkpoint (if any), trains and
  evaluates (module doc, steps 3-6).

  Args:
    run: from `setup.setup_run`.
    workdir: the locked work directory: `checkpoints/`, `tb/`, `eval/step_<N>/`,
      `config.json`.
    on_step: called with (step, batch) before each step trains on `batch` (`OnStep`).

  Returns:
    A `TrainResult`.

  Raises:
    checkpoint_restore.IncompatibleCheckpointError: `workdir` holds a checkpoint of
      another config.
    FloatingPointError: a non-finite loss / gradient / parameter norm (first bad
      step named, and the newest checkpoint that restores with finite values).
    checkpoint_integrity.CheckpointSaveError: a checkpoint could not be written (the
      partial one is removed).
    checkpoint_integrity.DamagedCheckpointError: every checkpoint in `workdir` is
      damaged.
  """
  is_main = jax.process_index() == 0
  config, mesh, train_iter, model, state, evaluators = (
    run.config,
    run.mesh,
    run.train_iter,
    run.model,
    run.state,
    run.evaluators,
  )
  steps_per_epoch, total_steps, global_batch = (
    run.steps_per_epoch,
    run.total_steps,
    run.global_batch,
  )
  ckpt_every = checkpoint_interval(config)
  manager = checkpoint_lib.create_checkpoint_manager(workdir, config.train.keep_checkpoints)
  state = checkpoint_lib.restore_checkpoint(manager, state, train_iter, config)
  if is_main:  # the run is accepted: config.json describes the checkpoints beside it
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    run_card.write_run_card(run.card, workdir)
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
    result.results, result.evals = run_evaluators(
      evaluators, state.variables, step=step, outdir=workdir
    )
    logger.write(step, eval_writers.scalars(result.results), prefix="eval")
    return result.evals[0]

  logger = MetricLogger(workdir / TB_SUBDIR, is_main)
  bar = progress_bar(total_steps, start_step, is_main)
  result = TrainResult(
    step=start_step, total_steps=total_steps, config=config, evaluators=evaluators
  )
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
