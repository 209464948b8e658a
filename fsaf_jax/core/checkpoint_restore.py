"""Reading a training checkpoint for inference: its config and model variables.

A checkpoint `WORKDIR/checkpoints/<step>/` (written by `fsaf_jax.training.checkpoint`)
holds the orbax items `ITEM_NAMES`; inference reads only `variables`
(`{'params', 'batch_stats'}`) and `config` (the run's config, `model.num_classes`
resolved), so a checkpoint alone rebuilds its model. Every read is verified
(`checkpoint_integrity`: checksums, finite values); given a work dir, damaged newer
steps are skipped with one warning line naming them. `inference_config` checks that a
config describes the same network and input size as a checkpoint's.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from data_pipelines import paths
from data_pipelines.errors import UserError
from fsaf_jax.core import checkpoint_integrity as integrity
from fsaf_jax.core.config_json import config_differences, config_from_json, field_in

CHECKPOINT_DIR = "checkpoints"
# How many times a read starts again on newer checkpoints when a live run deletes the
# one being read (keep_checkpoints) before giving up with one line.
_MAX_ROTATIONS = 20
ITEM_NAMES = ("variables", "train_state", "data_iter", "config")


def read_only_options() -> ocp.CheckpointManagerOptions:
  """Options of a manager that only reads (saving off, as orbax otherwise warns it sets)."""
  return ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)


def item_handlers() -> dict[str, ocp.CheckpointHandler]:
  """Fresh orbax handlers of the items `ITEM_NAMES` (arrays: standard; the rest: JSON).

  A manager given them knows every item of a checkpoint, so that it reads the metadata
  of, and restores, any subset of them without warning about the others.
  """
  return {
    "variables": ocp.StandardCheckpointHandler(),
    "train_state": ocp.StandardCheckpointHandler(),
    "data_iter": ocp.JsonCheckpointHandler(),
    "config": ocp.JsonCheckpointHandler(),
  }


# Config fields that define the embedding: they must match the checkpoint's. Everything
# else (loss, optimiser, sampling, augmentation, data paths, eval settings) may differ,
# and so may the dataset (cross-domain evaluation) and `model.dtype` (compute dtype).
INFERENCE_FIELDS = ("model.", "input.image_size")
_FREE_MODEL_FIELDS = ("model.dtype", "model.num_classes")


class IncompatibleCheckpointError(UserError):
  """The checkpoint was written by a run whose config differs in a state-defining field.

  A user error printed whole by the command-line entries (`multiline`): one line per
  differing field, then what to do."""

  multiline = True


def step_dirs(directory: epath.Path) -> list[int]:
  """Steps of the integer-named folders in `directory` (orbax's temporary ones excluded)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


def _looks_like_step(path: epath.Path) -> bool:
  """An integer-named folder holding something of a checkpoint (even a damaged one)."""
  marks = (*ITEM_NAMES, "_CHECKPOINT_METADATA", integrity.MANIFEST_FILE)
  return path.name.isdigit() and path.is_dir() and any((path / m).exists() for m in marks)


def _find_checkpoint(path: epath.Path) -> tuple[epath.Path, int | None]:
  """(manager directory, step or None for the latest) of a workdir / checkpoints dir /
  step dir."""
  if (path / CHECKPOINT_DIR).is_dir():
    return path / CHECKPOINT_DIR, None
  if _looks_like_step(path):
    return path.parent, int(path.name)
  if (path / "variables").is_dir() and (path / "config").is_dir():
    raise ValueError(f"{path} looks like a checkpoint but its name is not a step number")
  if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
    return path, None
  raise FileNotFoundError(
    f"no checkpoint at {path}: expected a training work directory (holding "
    f"{CHECKPOINT_DIR}/), its {CHECKPOINT_DIR}/ directory, or one checkpoint "
    f"{CHECKPOINT_DIR}/<step>/"
  )


def locate_checkpoint(path: epath.Path) -> tuple[epath.Path, int | None]:
  """(the checkpoints directory, the step `path` names, else its latest; None if none).

  `path`: a training work directory, its `checkpoints/` directory or one checkpoint
  `checkpoints/<step>/` (FileNotFoundError naming it otherwise). The latest step is
  the newest folder, intact or not (`restore_for_inference` skips damaged ones).
  """
  directory, step = _find_checkpoint(path)
  if step is None:
    step = max(step_dirs(directory), default=None)
  return directory, step


def _read_inference_step(
  directory: epath.Path, step: int
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, host variables) of checkpoint `step`, verified (checksums, finite values).

  Raises:
    checkpoint_integrity.DamagedCheckpointError: naming the step folder.
  """
  where = directory / str(step)
  integrity.verify_manifest(where)
  # Handlers of every item, so that the metadata (shapes, dtypes) of those read is known.
  manager = ocp.CheckpointManager(
    directory,
    item_handlers=item_handlers(),
    options=read_only_options(),
  )
  try:
    metadata = manager.item_metadata(step)["variables"]
    # Onto this process's first device, whatever devices / processes wrote it (a pod's
    # checkpoint read on one machine): without a sharding orbax insists on the saved one.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), np.dtype(m.dtype), sharding=device),
      metadata,
    )
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        config=ocp.args.JsonRestore(),
        variables=ocp.args.StandardRestore(abstract),
      ),
    )
    variables = jax.tree.map(np.asarray, dict(restored.variables))
    config = config_from_json(restored.config)
    if not {"params", "batch_stats"} <= set(variables):
      raise KeyError(f"variables hold {sorted(variables)}, not params and batch_stats")
  except Exception as e:  # noqa: BLE001 (whatever orbax raises on a damaged file)
    raise integrity.as_damage(where, e) from None
  finally:
    manager.close()
  integrity.check_finite_checkpoint(variables, where, "variables")
  return config, variables


def restore_for_inference(
  path: str | os.PathLike, step: int | None = None
) -> tuple[int, ml_collections.ConfigDict, dict[str, Any]]:
  """The step, config and model variables of a verified checkpoint, for inference.

  Args:
    path: a training work directory, its `checkpoints/` directory (then the newest
      intact checkpoint: damaged newer ones are skipped with one warning line naming
      them), or one checkpoint directory `.../checkpoints/<step>` (that one only).
    step: a checkpoint step of the work directory (that one only).

  Returns:
    `(step, config, variables)`: the step read, the run's config (with
    `model.num_classes` resolved) and `{'params', 'batch_stats'}` as host numpy arrays.

  Raises:
    FileNotFoundError: no checkpoint at `path` (or not `step`).
    checkpoint_integrity.DamagedCheckpointError: the named step is damaged (or every
      step of the directory is; steps a live run deletes while they are read are not
      damage: the newer ones are read instead).
  """
  path = epath.Path(paths.resolve(path))
  directory, named = _find_checkpoint(path)
  steps = step_dirs(directory)
  step = named if step is None else step
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {directory} (steps there: {steps})"
      )
    return (step, *_read_inference_step(directory, step))
  for _ in range(_MAX_ROTATIONS):
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {directory} (steps there: [])")
    step, found, damaged = integrity.newest_intact(
      steps, lambda s: _read_inference_step(directory, s)
    )
    # A step whose folder is gone was deleted while being read: a live run rotated it
    # away (keep_checkpoints), it is not damaged. Read the steps there now.
    rotated = [s for s, _ in damaged if not (directory / str(s)).exists()]
    damaged = [(s, e) for s, e in damaged if s not in rotated]
    if step is not None or not rotated:
      break
    logging.info(
      "checkpoint(s) %s of %s were replaced while read; reading again", rotated, directory
    )
    steps = step_dirs(directory)
  else:
    raise UserError(
      f"the checkpoints in {directory} were replaced {_MAX_ROTATIONS} times while being "
      "read: a run is saving there (keep_checkpoints=1 deletes each one as the next is saved)",
      hint="evaluate once the run has stopped, or train with --config.train.keep_checkpoints=2 "
      "or more",
    )
  if step is None:
    raise integrity.all_damaged_error(directory, damaged, "")
  if damaged:
    logging.warning("%s", integrity.describe_skipped(damaged, step, "using the newest intact one,"))
  return (step, *found)


def restore_variables(
  path: str | os.PathLike, step: int | None = None
) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The config and model variables of a checkpoint, for inference.

  Args:
    path: a training work directory (its newest intact checkpoint), its `checkpoints/`
      directory, or one checkpoint directory `.../checkpoints/<step>`.
    step: a checkpoint step of the work directory instead of the latest.

  Returns:
    `(config, variables)`: the run's config (with `model.num_classes` resolved: build
    the model with `registry.create_model(config.model, config.model.num_classes)`) and
    `{'params', 'batch_stats'}` as host numpy arrays (place them with
    `jax.device_put`; nothing of the optimiser state is read).

  Raises:
    FileNotFoundError: no checkpoint at `path` (or not `step`).
    checkpoint_integrity.DamagedCheckpointError: see `restore_for_inference`.
  """
  _, config, variables = restore_for_inference(path, step)
  return config, variables


def newest_restorable_step(workdir_or_checkpoints: str | os.PathLike) -> int | None:
  """The newest checkpoint step that verifies and restores with finite values (model
  and optimiser state), or None. For messages after a failure (e.g. the NaN stop)."""
  path = epath.Path(os.fspath(workdir_or_checkpoints))
  directory = path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path

  def check(step: int) -> int:
    _read_inference_step(directory, step)
    where = directory / str(step)
    manager = ocp.CheckpointManager(
      directory,
      item_handlers=item_handlers(),
      options=read_only_options(),
    )
    try:
      restored = manager.restore(
        step, args=ocp.args.Composite(train_state=ocp.args.StandardRestore())
      )
      train_state = jax.tree.map(np.asarray, dict(restored.train_state))
    except Exception as e:  # noqa: BLE001
      raise integrity.as_damage(where, e) from None
    finally:
      manager.close()
    integrity.check_finite_checkpoint(train_state, where, "train_state")
    return step

  step, _, _ = integrity.newest_intact(step_dirs(directory), check)
  return step


def inference_config(
  config: ml_collections.ConfigDict, saved: ml_collections.ConfigDict, where: str
) -> ml_collections.ConfigDict:
  """The config to evaluate a checkpoint with: `config`, checked against `saved`.

  Args:
    config: the config given on the command line.
    saved: the checkpoint's config (`restore_variables`).
    where: the checkpoint's path, for messages.

  Returns:
    A copy of `config` with `model.num_classes` taken from `saved` (when -1) and,
    when `config.input.data_dir` is empty, the checkpoint's (absolute) data_dir.

  Raises:
    IncompatibleCheckpointError: a field of `INFERENCE_FIELDS` differs
      (each is named with both values).
  """
  diffs = config_differences(
    saved,
    config,
    ignore=lambda f: f in _FREE_MODEL_FIELDS or not field_in(f, INFERENCE_FIELDS),
    label="--config",
  )
  saved_classes = int(saved.model.num_classes)
  if config.model.num_classes not in (-1, saved_classes):
    diffs.append(
      f"model.num_classes: checkpoint {saved_classes!r}, --config {config.model.num_classes!r}"
    )
  if diffs:
    raise IncompatibleCheckpointError(
      f"the checkpoint {where} was trained with another network or input size than "
      "--config describes:\n  " + "\n  ".join(diffs) + "\nUse the config the checkpoint "
      "was trained with (or override these fields with --config.<field>=...)."
    )
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.num_classes = saved_classes
  if not config.input.data_dir:
    config.input.data_dir = saved.input.data_dir
  return config
