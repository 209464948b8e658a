"""The training loop: data, state, checkpoints, metrics, evaluation.

`train_and_evaluate(config, workdir)` is what `python train.py` runs:

1. Bad settings refused before anything is written (`setup.check_settings`); the work
   dir locked. (`jax.distributed` is started by the entry points, train.py and eval.py,
   before they call the library.)
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
   steps (`periodic`, big_vision's `itstime`), so the step loop stays asynchronous;
   every step's metrics are kept until then, so the reported step is the first bad one
   and no checkpoint ever holds a non-finite state.

Only process 0 writes logs, event files and metrics; every process takes part in
checkpointing and evaluation.

Reliability (`checkpoint_integrity`, `workdir_lock`): the work dir is locked for the
run (a second run on it is refused); every checkpoint gets a checksum manifest once
written, resume skips damaged ones (one warning line), a failed save stops the run at
the next step with one line (`save_monitor.CheckpointSaveError`); `config.json` is
written once the resume check has accepted the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipelines import errors
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.evaluation import writers as eval_writers
from fsaf_jax.evaluation.evaluator import EvalResult, Evaluator, run_evaluators
from fsaf_jax.training import checkpoint as checkpoint_lib
from fsaf_jax.training import run_card, setup, workdir_lock
from fsaf_jax.training.periodic import StepTimer, periodic
from fsaf_jax.training.preemption import StopOnSignal
from fsaf_jax.training.save_monitor import CheckpointSaveError, SaveMonitor
from fsaf_jax.training.setup import check_settings, checkpoint_interval, setup_run
from fsaf_jax.training.train_state import TrainState
from fsaf_jax.training.train_step import check_finite_metrics, make_train_step
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
      check_finite_metrics(metrics, step, FINITE_KEYS)
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
    FloatingPointError: a non-finite loss / gradient / parameter norm (first bad
      step named, and the newest checkpoint that restores with finite values).
    save_monitor.CheckpointSaveError: a checkpoint could not be written (the partial
      one is removed).
    checkpoint_integrity.DamagedCheckpointError: every checkpoint in `workdir` is
      damaged.
  """
  check_settings(config)  # refused before anything is written or any data work
  workdir = epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))
  is_main = jax.process_index() == 0
  created = is_main and not workdir.exists()
  if is_main:
    errors.check_output_dir(workdir, "--workdir")
    workdir.mkdir(parents=True, exist_ok=True)
  try:
    with workdir_lock.WorkdirLock(workdir, enabled=is_main):
      checkpoint_lib.check_workdir_config(workdir, config)  # before any data work
      run = setup_run(config, workdir, config_name=config_name, prepare_data=prepare_data)
      return _train(run, workdir, on_step)
  except BaseException:
    if created:  # a refused fresh run leaves no work dir holding only train.lock
      workdir_lock.remove_unused_workdir(workdir)
    raise


def _train(run: setup.Run, workdir: epath.Path, on_step: OnStep | None) -> TrainResult:
  """Resumes `run` from `workdir`'s newest intact checkpoint (if any), trains and
  evaluates (module doc, steps 3-6; `train_and_evaluate` lists what it raises).

  Args:
    run: from `setup.setup_run`.
    workdir: the locked work directory.
    on_step: called with (step, batch) before each step trains on `batch` (`OnStep`).
  """
  config, total, train_iter = run.config, run.total_steps, run.train_iter
  with contextlib.ExitStack() as stack:
    state, saver, logger, bar = _open(stack, run, workdir)
    step = int(state.step)
    train_step = make_train_step(run.model, config.loss, run.mesh)
    log_every = max(1, int(config.train.log_every_steps))
    eval_every = int(config.train.eval_every_epochs) * run.steps_per_epoch
    ckpt_every = checkpoint_interval(config)
    result = TrainResult(step, total, config=config, evaluators=run.evaluators)
    metrics, timer = _StepMetrics(saver.last_good), StepTimer(run.global_batch)
    with StopOnSignal() as stop:
      while step < total:
        # Multi-process: agree on stopping at log steps only (it is a collective).
        if (jax.process_count() == 1 or periodic(step, log_every)) and stop.agreed():
          break
        batch = next(train_iter)
        if on_step is not None:
          on_step(step + 1, batch)
        state, step_metrics = train_step(state, batch)
        step += 1
        metrics.add(step, step_metrics)
        saver.monitor.poll()  # a failed save stops the run here, not at the next one
        timer.tick(step_metrics)
        bar.update(1)
        at_eval = periodic(step, eval_every) and step < total
        at_ckpt = periodic(step, ckpt_every, total)
        at_log = periodic(step, log_every, total)
        if at_log or at_ckpt or at_eval:
          metrics.check()
        if at_log:
          _log(step, metrics.means(), timer, logger, bar, run.steps_per_epoch)
        if at_ckpt:
          saver.save(step, state)
        if at_eval:
          _evaluate(result, run.evaluators, state, step, workdir, logger)
          timer.restart()
      if step < total:
        result.signal = _stop(stop.signum, step, total, metrics, saver, state)
    bar.close()
    saver.monitor.finish()  # the last checkpoint is complete and checked
    train_iter.close()
    result.step = step
    if result.signal is None:
      # Trained to the end: evaluate (also when a finished run is started again).
      saver.save(step, state)
      saver.monitor.finish()
      _evaluate(result, run.evaluators, state, step, workdir, logger)
  return result


def _open(
  stack: contextlib.ExitStack, run: setup.Run, workdir: epath.Path
) -> tuple[TrainState, _Saver, MetricLogger, Any]:
  """Restores the run's newest intact checkpoint and opens what the steps use, each
  closed by `stack`: the checkpoint manager, the metric logger, the save monitor (the
  last save finished and checked on the way out, reported in one line if another
  exception is already on its way), the train iterator and the progress bar.

  Returns:
    (the state to train from, the `_Saver`, the `MetricLogger`, the progress bar).
  """
  config, is_main = run.config, jax.process_index() == 0
  manager = checkpoint_lib.create_checkpoint_manager(workdir, config.train.keep_checkpoints)
  stack.callback(manager.close)
  state = checkpoint_lib.restore_checkpoint(manager, run.state, run.train_iter, config)
  if is_main:  # the run is accepted: config.json describes the checkpoints beside it
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    run_card.write_run_card(run.card, workdir)
  logger = MetricLogger(workdir / TB_SUBDIR, is_main)
  stack.callback(logger.close)
  saver = _Saver(manager, run.train_iter, config)
  stack.callback(saver.monitor.close)
  stack.callback(run.train_iter.close)
  stack.push(saver.finish_on_exit)
  start = int(state.step)
  if start:
    logging.info("Resuming from step %d of %d", start, run.total_steps)
  bar = stack.enter_context(progress_bar(run.total_steps, start, is_main))
  return state, saver, logger, bar


class _Saver:
  """The run's checkpoint saves: one at a time, each checked (`SaveMonitor`) before the
  next starts."""

  def __init__(self, manager, train_iter, config: ml_collections.ConfigDict):
    self.manager, self._train_iter, self._config = manager, train_iter, config
    self.monitor = SaveMonitor(manager)

  def save(self, step: int, state: TrainState) -> None:
    self.monitor.finish()  # the previous save is complete and checked before the next one
    if checkpoint_lib.save_checkpoint(self.manager, step, state, self._train_iter, self._config):
      self.monitor.started(step)

  def last_good(self) -> int | None:
    """The newest checkpoint step that restores with finite values (None: none)."""
    try:
      self.monitor.finish()
    except CheckpointSaveError as e:
      logging.error("%s", e)
    return checkpoint_restore.newest_restorable_step(self.manager.directory)

  def finish_on_exit(self, exc_type, exc, tb) -> bool:
    """`ExitStack` exit: the pending save finished and checked; its failure is raised,
    or logged in one line when another exception is already on its way."""
    del exc, tb
    if exc_type is None:
      self.monitor.finish()
      return False
    try:
      self.monitor.finish()
    except CheckpointSaveError as e:
      logging.error("%s", e)
    return False


class _StepMetrics:
  """The steps' metrics: kept on the device until a log, checkpoint or evaluation step
  fetches them and checks them finite (`_fetch_and_check`), then averaged per log line."""

  def __init__(self, last_good: Callable[[], int | None]):
    self._last_good = last_good
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []  # not yet fetched / checked
    self._window: list[dict[str, float]] = []  # checked, since the last log line

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def check(self) -> None:
    """Fetches and checks the pending steps (raises FloatingPointError, see
    `_fetch_and_check`)."""
    if self._pending:
      self._window.extend(_fetch_and_check(self._pending, self._last_good))
      self._pending.clear()

  def means(self) -> dict[str, float]:
    """The mean of each metric over the checked steps since the last call."""
    window, self._window = self._window, []
    return {k: float(np.mean([m[k] for m in window])) for k in window[-1]}


def _log(
  step: int,
  means: dict[str, float],
  timer: StepTimer,
  logger: MetricLogger,
  bar: Any,
  steps_per_epoch: int,
) -> None:
  """One log line: the window's mean metrics, the step rate and the epoch, to
  TensorBoard, stdout and the progress bar; the timer restarts."""
  means = {**means, **timer.rates(), "epoch": step / steps_per_epoch}
  logger.write(step, means)
  postfix = {"loss": f"{means['loss']:.4f}", "lr": f"{means['lr']:.3g}"}
  if "images_per_s" in means:
    postfix["img_s"] = f"{means['images_per_s']:.1f}"
  bar.set_postfix(postfix, refresh=False)
  timer.restart()


def _evaluate(
  result: TrainResult,
  evaluators: list[Evaluator],
  state: TrainState,
  step: int,
  workdir: epath.Path,
  logger: MetricLogger,
) -> None:
  """Evaluates `state` at `step` on every evaluation set: the tables printed,
  `WORKDIR/eval/step_<step>/[<set>/]` written, the metrics to TensorBoard; the results
  and metrics.json contents kept in `result`."""
  result.results, result.evals = run_evaluators(
    evaluators, state.variables, step=step, outdir=workdir
  )
  result.eval = result.evals[0]
  logger.write(step, eval_writers.scalars(result.results), prefix="eval")


def _stop(
  signum: int, step: int, total: int, metrics: _StepMetrics, saver: _Saver, state: TrainState
) -> int:
  """Stopped by signal `signum` at `step`: the pending metrics checked, a checkpoint
  saved. Returns `signum`."""
  metrics.check()
  saver.save(step, state)
  logging.warning(
    "Stopped by signal %s at step %d of %d; checkpoint saved in %s. Run the same "
    "command again to resume.",
    signum,
    step,
    total,
    saver.manager.directory,
  )
  return signum
