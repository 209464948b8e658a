"""Checkpoints of a training run: orbax `CheckpointManager` in `WORKDIR/checkpoints`.

Every checkpoint `WORKDIR/checkpoints/<step>/` holds four orbax items:

- `variables`: `{'params', 'batch_stats'}` (`StandardSave`), all inference needs;
- `train_state`: `{'step', 'opt_state'}` and, when a loss term has trained parameters
  (the centre loss's centres), `'loss_params'` (`StandardSave`);
- `data_iter`: the train iterator's state (`JsonSave`, written once): the next batch of
  the *global* batch sequence and a sampler fingerprint, the same on every process, so
  a run resumes on any number of processes / devices;
- `config`: the run's config as JSON, with `model.num_classes` and
  `train.steps_per_epoch` resolved from the data (so a checkpoint alone rebuilds its
  model).

The variables live apart from the optimiser state so that `restore_variables`
(eval.py, `fsaf_jax.extract`) reads only what inference needs. The manager keeps the
latest `config.train.keep_checkpoints` checkpoints (`preservation_policy=LatestN`);
saves are asynchronous (the device-to-host copy happens before `save` returns, so the
caller may donate the state to the next step), and a checkpoint directory appears only
once complete, so a job killed mid-save resumes from the previous one.

A run resumes only from a checkpoint of a compatible config: every field may change
the meaning or the shapes of the saved state except those in `RESUMABLE_FIELDS` (how
long to train, how often to log / save / evaluate, where the data lives, how it is
loaded, evaluation settings). Anything else differing is refused with
`IncompatibleCheckpointError` naming each field and both values; the training sets
(`input.datasets`) are compared by name, not by the folder their downloads are in.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from data_pipelines.dataset_list import FOLDER_SEPARATOR
from fsaf_jax.core import checkpoint_integrity as integrity
from fsaf_jax.core.checkpoint_restore import (
  CHECKPOINT_DIR,
  ITEM_NAMES,
  IncompatibleCheckpointError,
  step_dirs,
)
from fsaf_jax.core.config_json import config_differences, config_to_json, field_in
from fsaf_jax.core.errors import UserError
from fsaf_jax.training.train_state import TrainState

# Config fields (dotted paths; a path ending in '.' is a prefix) that may differ
# between a checkpoint and the run resuming from it: they decide how long and how the
# loop runs, where the data is read from, or how evaluation is done, never the saved
# state or the batch sequence. `init.pretrained` only matters at step 0.
RESUMABLE_FIELDS = (
  "train.num_epochs",
  "train.log_every_steps",
  "train.checkpoint_every_steps",
  "train.keep_checkpoints",
  "train.eval_every_epochs",
  "input.data_dir",
  "input.manual_dir",
  "input.num_workers",
  "input.prefetch",
  "input.eval_batch_size",
  "init.pretrained",
  "init.zero_init_attention_bn",
  "host_allocator",  # a field of older configs (now the --host_allocator flag)
  "eval.",
)

# Fields `setup.resolve_config` fills in from the data (unknown before it is ready).
RESOLVED_FIELDS = ("model.num_classes", "train.steps_per_epoch")


def _sets_by_name(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """The config as JSON with the entries of `input.datasets` ('name@folder') reduced to
  their names: where a set's download lies may change (as `input.manual_dir` may),
  which sets are trained on may not."""
  if isinstance(config, ml_collections.ConfigDict):
    tree = config_to_json(config)
  else:
    tree = json.loads(json.dumps(dict(config)))  # a copy
  if tree.get("input", {}).get("datasets"):
    tree["input"]["datasets"] = [
      str(entry).partition(FOLDER_SEPARATOR)[0] for entry in tree["input"]["datasets"]
    ]
  return tree


def resume_differences(
  saved: ml_collections.ConfigDict | Mapping[str, Any], current: ml_collections.ConfigDict
) -> list[str]:
  """`config_differences` outside `RESUMABLE_FIELDS`: what forbids resuming (sorted
  lines `'<field>: checkpoint <value>, this run <value>'`, empty if compatible). The
  training sets (`input.datasets`) are compared by name."""
  return config_differences(
    _sets_by_name(saved), _sets_by_name(current), ignore=lambda f: field_in(f, RESUMABLE_FIELDS)
  )


def check_compatible(
  saved: ml_collections.ConfigDict | Mapping[str, Any],
  current: ml_collections.ConfigDict,
  where: str,
) -> None:
  """Raises IncompatibleCheckpointError naming every differing field (see module doc).

  Args:
    saved: the checkpoint's config.
    current: this run's (resolved) config.
    where: the checkpoint's path, for the message.
  """
  diffs = resume_differences(saved, current)
  if diffs:
    raise _incompatible(f"the checkpoint {where} was", diffs)


def _incompatible(what_was: str, diffs: list[str]) -> IncompatibleCheckpointError:
  return IncompatibleCheckpointError(
    f"{what_was} written with a different config; these fields "
    "change the saved state or the batch sequence and must match to resume:\n  "
    + "\n  ".join(diffs)
    + "\nUse the checkpoint's values (--config.<field>=...), or another --workdir to "
    "start a new run. Fields that may differ: " + ", ".join(RESUMABLE_FIELDS)
  )


def check_workdir_config(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Refuses a run on a work dir holding checkpoints of another config, before any data
  work (the demo would write and build its dataset, a full run would build its own).

  Compares `config` with `WORKDIR/config.json` (the config of the run that wrote the
  checkpoints beside it) outside `RESUMABLE_FIELDS` and the fields filled in from the
  data (`RESOLVED_FIELDS`, compared at resume by `check_compatible`). Nothing is
  checked without a checkpoint step or a readable config.json.

  Raises:
    IncompatibleCheckpointError: naming every differing field.
  """
  workdir = epath.Path(workdir)
  path = workdir / "config.json"
  if not path.exists() or not step_dirs(workdir / CHECKPOINT_DIR):
    return
  try:
    saved = json.loads(path.read_text())
  except (OSError, ValueError):
    return  # the checkpoint's own config is checked at resume
  diffs = config_differences(
    _sets_by_name(saved),
    _sets_by_name(config),
    ignore=lambda f: field_in(f, RESUMABLE_FIELDS) or field_in(f, RESOLVED_FIELDS),
  )
  if diffs:
    raise _incompatible(f"the checkpoints in {workdir / CHECKPOINT_DIR} were", diffs)


# --- The manager. -------------------------------------------------------------------------


def check_keep(keep: int) -> None:
  """Raises UserError unless `keep` (config.train.keep_checkpoints) is >= 1."""
  if int(keep) < 1:
    raise UserError(
      f"config.train.keep_checkpoints must be >= 1 (how many of the newest checkpoints "
      f"are kept), got {keep}"
    )


def create_checkpoint_manager(
  workdir: str | os.PathLike, keep: int, *, read_only: bool = False
) -> ocp.CheckpointManager:
  """Orbax manager over `workdir/checkpoints`, keeping the latest `keep` checkpoints.

  Args:
    workdir: the run's work directory.
    keep: checkpoints to keep (>= 1); older ones are deleted after each save.
    read_only: never write or delete (for inspection / inference).

  Returns:
    An `ocp.CheckpointManager` with items `ITEM_NAMES`. Saves are asynchronous: call
    `wait_until_finished()` before reading a checkpoint back or exiting.
  """
  check_keep(keep)
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(n=int(keep)),
    create=not read_only,
    read_only=read_only,
    save_interval_steps=0 if read_only else 1,  # orbax warns when it sets it itself
    enable_async_checkpointing=True,
  )
  # Every item's handler, so that restoring some items does not warn about the others.
  return ocp.CheckpointManager(
    epath.Path(workdir) / CHECKPOINT_DIR, item_names=ITEM_NAMES, options=options
  )


def _state_items(state: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  train_state = {"step": state.step, "opt_state": state.opt_state}
  if state.loss_params:
    train_state["loss_params"] = state.loss_params
  return variables, train_state


def save_checkpoint(
  manager: ocp.CheckpointManager,
  step: int,
  state: TrainState,
  data_iter: Any,
  config: ml_collections.ConfigDict,
) -> bool:
  """Saves `state`, the iterator's state and the config as checkpoint `step`.

  Call on every process (orbax synchronises them; process 0 writes the shared files).

  Args:
    manager: from `create_checkpoint_manager`.
    step: the step number (`state.step`; passed to avoid a device sync).
    state: the train state after `step` steps.
    data_iter: the train iterator (`get_state()` / `set_state()`), positioned at the
      first batch not yet trained on.
    config: the run's resolved config.

  Returns:
    True if a checkpoint was started (False if `step` is already saved).
  """
  if step in manager.all_steps():
    return False
  variables, train_state = _state_items(state)
  return manager.save(
    int(step),
    args=ocp.args.Composite(
      variables=ocp.args.StandardSave(variables),
      train_state=ocp.args.StandardSave(train_state),
      data_iter=ocp.args.JsonSave(json.loads(data_iter.get_state())),
      config=ocp.args.JsonSave(config_to_json(config)),
    ),
    force=True,
  )


def _read_train_step(
  manager: ocp.CheckpointManager,
  abstract: tuple[Any, Any],
  config: ml_collections.ConfigDict,
  step: int,
) -> Any:
  """Checkpoint `step`, verified: its manifest, config (checked compatible), arrays
  (finite) and iterator state. Raises DamagedCheckpointError if any of it is wrong."""
  where = manager.directory / str(step)
  integrity.verify_manifest(where)
  try:
    saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    saved_config = saved.config
  except Exception as e:  # noqa: BLE001 (whatever orbax raises on a damaged file)
    raise integrity.as_damage(where, e) from None
  check_compatible(saved_config, config, str(where))
  try:
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(abstract[0]),
        train_state=ocp.args.StandardRestore(abstract[1]),
        data_iter=ocp.args.JsonRestore(),
      ),
    )
    restored_step = int(restored.train_state["step"])
  except Exception as e:  # noqa: BLE001
    raise integrity.as_damage(where, e) from None
  if restored_step != step:
    raise integrity.DamagedCheckpointError(where, f"it holds state.step={restored_step}")
  integrity.check_finite_checkpoint(restored.variables, where, "variables")
  integrity.check_finite_checkpoint(restored.train_state, where, "train_state")
  return restored


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def restore_checkpoint(
  manager: ocp.CheckpointManager,
  state: TrainState,
  data_iter: Any,
  config: ml_collections.ConfigDict,
  step: int | None = None,
) -> TrainState:
  """Restores checkpoint `step` (default the newest intact one) into `state` and `data_iter`.

  Every step is verified first (`checkpoint_integrity`: its checksums, readable, finite
  values). With `step=None`, damaged newer steps are skipped with one warning line
  naming them and moved to `WORKDIR/damaged_checkpoints/` (kept, out of the way of the
  saves to come).

  Args:
    manager: from `create_checkpoint_manager`.
    state: a freshly initialised train state: gives the tree structure, shapes,
      dtypes and shardings to restore into.
    data_iter: the train iterator; its position is set to the checkpoint's.
    config: this run's resolved config, checked against the checkpoint's.
    step: checkpoint to restore; None = the newest intact one.

  Returns:
    The restored train state (`state` itself if there is no checkpoint).

  Raises:
    IncompatibleCheckpointError: the configs differ outside `RESUMABLE_FIELDS`.
    checkpoint_integrity.DamagedCheckpointError: `step` (or, with `step=None`, every
      checkpoint) is damaged.
  """
  directory = epath.Path(manager.directory)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_items(state))
  read = lambda s: _read_train_step(manager, abstract, config, s)  # noqa: E731
  if step is not None:
    restored = read(step)
  else:
    steps = step_dirs(directory)
    if not steps:
      return state
    step, restored, damaged = integrity.newest_intact(steps, read)
    if damaged:
      if step is None:
        raise integrity.all_damaged_error(
          directory, damaged, "move the folder away to start afresh, or use another --workdir"
        )
      _sync("fsaf_checkpoint_damaged_found")
      kept = directory.parent / integrity.DAMAGED_SUBDIR
      if jax.process_index() == 0:
        for bad, _ in damaged:
          integrity.set_aside(directory / str(bad), directory.parent)
      _sync("fsaf_checkpoint_damaged_moved")
      logging.warning(
        "%s (the damaged ones are kept in %s)",
        integrity.describe_skipped(damaged, step, "resuming from the newest intact one,"),
        kept,
      )
      manager.reload()
  where = str(directory / str(step))
  data_iter.set_state(json.dumps(restored.data_iter).encode())
  data_iter.start_prefetch()
  variables, train_state = restored.variables, restored.train_state
  logging.info("Restored checkpoint %s (step %d)", where, step)
  return state.replace(
    step=train_state["step"],
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    loss_params=train_state.get("loss_params", {}),
    opt_state=train_state["opt_state"],
  )
