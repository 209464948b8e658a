"""The run card: what a training run is about to do, to check it against a paper.

Printed as one table when training starts and written to `WORKDIR/run_card.json`:
dataset and split sizes, each training set's ids, images and cameras (one row per set
when there are several or `config.input.combineall`), P x K and the sampler, the epoch
and step counts, the learning rate at the start, at the end of the warmup and after
every decay, the pretrained file with how many parameters it set and how many stayed at
their initial values, the parameter count, the devices, the mesh and the global batch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import traverse_util

from data_pipelines.union_source import SetCounts
from fsaf_jax.models.pretrained import PretrainedReport

FILE_NAME = "run_card.json"


def lr_milestones(
  schedule: Callable[[int], Any], steps_per_epoch: int, total_steps: int
) -> list[dict[str, float]]:
  """The lr at the start, at the first epoch at its peak, and after every later decrease.

  Read from the schedule at every epoch start (both schedules of
  `fsaf_jax.training.optimizer` reach the peak and decay at epoch starts).

  Args:
    schedule: `step -> lr`.
    steps_per_epoch: optimiser steps per epoch.
    total_steps: steps of the run.

  Returns:
    A list of {'what', 'epoch' (0-based), 'step', 'lr'}.
  """
  num_epochs = max(1, math.ceil(total_steps / steps_per_epoch))
  # float32 schedule values, shown with the digits they carry.
  values = [float(f"{float(schedule(e * steps_per_epoch)):.7g}") for e in range(num_epochs)]
  peak = max(values)
  rows = [{"what": "start", "epoch": 0, "step": 0, "lr": values[0]}]
  top = next(e for e, v in enumerate(values) if np.isclose(v, peak, rtol=1e-6))
  if top:
    rows.append({"what": "warmup end", "epoch": top, "step": top * steps_per_epoch, "lr": peak})
  for e in range(top + 1, num_epochs):
    if values[e] < values[e - 1] * (1 - 1e-6):
      rows.append({"what": "decay", "epoch": e, "step": e * steps_per_epoch, "lr": values[e]})
  return rows


def _parameter_counts(variables: Mapping[str, Any], report: PretrainedReport | None):
  sizes = {
    "/".join(path): int(np.prod(leaf.shape))
    for path, leaf in traverse_util.flatten_dict(dict(variables["params"])).items()
  }
  total = sum(sizes.values())
  if report is None:
    return total, 0
  loaded = sum(sizes.get(name.removeprefix("params/"), 0) for name in report.loaded)
  return total, loaded


def build_run_card(
  config: ml_collections.ConfigDict,
  *,
  config_name: str | None,
  split_sizes: Mapping[str, int],
  num_train_ids: int,
  sampler_mode: str,
  sampler_steps_per_epoch: int,
  schedule: Callable[[int], Any],
  variables: Mapping[str, Any],
  pretrained_report: PretrainedReport | None,
  mesh: jax.sharding.Mesh,
  training_sets: Sequence[SetCounts] = (),
) -> dict[str, Any]:
  """Collects the run card (a JSON-serialisable dict).

  Args:
    config: the resolved run config (`train.steps_per_epoch` positive).
    config_name: e.g. 'fsaf_market', or None.
    split_sizes: images per split, e.g. {'train': 12936, 'query': 3368, 'gallery': 15913}.
    num_train_ids: training identities.
    sampler_mode: `config.input.sampler`.
    sampler_steps_per_epoch: batches of one sampler epoch.
    schedule: the optimiser's `step -> lr`.
    variables: the initial {'params', 'batch_stats'}.
    pretrained_report: what the pretrained file set, or None (no file).
    mesh: the device mesh.
    training_sets: each training set's share (`union_source.SetCounts`), in order.
  """
  p, k = int(config.input.num_identities), int(config.input.num_instances)
  steps_per_epoch = int(config.train.steps_per_epoch)
  total_steps = int(config.train.num_epochs) * steps_per_epoch
  total_params, loaded = _parameter_counts(variables, pretrained_report)
  return {
    "config": config_name,
    "dataset": config.input.dataset,
    "splits": {name: int(n) for name, n in split_sizes.items()},
    "train_identities": int(num_train_ids),
    "combineall": bool(config.input.combineall),
    "training_sets": [dataclasses.asdict(s) for s in training_sets],
    "P": p,
    "K": k,
    "global_batch": p * k,
    "sampler": sampler_mode,
    "sampler_steps_per_epoch": int(sampler_steps_per_epoch),
    "steps_per_epoch": steps_per_epoch,
    "epoch_length": config.train.epoch_length,
    "epochs": int(config.train.num_epochs),
    "total_steps": total_steps,
    "lr_schedule": config.optim.lr_schedule,
    "lr": lr_milestones(schedule, steps_per_epoch, total_steps),
    "pretrained": config.init.pretrained,
    # The checkpoint the file was converted from and its SHA-256 (convert_ibn records them).
    "pretrained_source": pretrained_report.source if pretrained_report else "",
    "pretrained_source_sha256": pretrained_report.source_sha256 if pretrained_report else "",
    "pretrained_parameters_set": loaded,
    "parameters_left_at_init": total_params - loaded,
    "parameters": total_params,
    "zero_init_attention_bn": bool(config.init.zero_init_attention_bn),
    "model": {
      "last_stride": int(config.model.last_stride),
      "mhsa_stages": list(config.model.mhsa_stages),
      "eca_placement": config.model.eca_placement,
      "fusion": config.model.fusion,
      "dtype": config.model.dtype,
    },
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "platform": jax.devices()[0].platform,
    "mesh": {str(name): int(size) for name, size in mesh.shape.items()},
    "per_device_batch": p * k // mesh.size,
  }


def _dataset_text(card: Mapping[str, Any]) -> str:
  """'market1501: train 12,936, query 3,368, gallery 15,913; 751 train identities', or
  for several sets / combineall the union's training images and the evaluated set."""
  sets = card["training_sets"]
  if len(sets) < 2 and not card["combineall"]:
    splits = ", ".join(f"{name} {n:,}" for name, n in card["splits"].items())
    return f"{card['dataset']}: {splits}; {card['train_identities']:,} train identities"
  union = sets[0]["name"] if len(sets) == 1 else f"{len(sets)} training sets"
  union += " (combineall)" if card["combineall"] else ""
  evaluated = ", ".join(f"{name} {n:,}" for name, n in card["splits"].items() if name != "train")
  return (
    f"{union}: {card['splits']['train']:,} training images, {card['train_identities']:,} "
    f"train identities; evaluated on {card['dataset']}: {evaluated}"
  )


def _training_set_rows(card: Mapping[str, Any]) -> list[tuple[str, str]]:
  """One row per training set when there are several or combineall (else none)."""
  sets = card["training_sets"]
  if len(sets) < 2 and not card["combineall"]:
    return []
  rows = []
  for i, s in enumerate(sets):
    text = (
      f"{s['name']}: {s['ids']:,} ids, {s['images']:,} images, {s['cameras']} cameras "
      f"(labels from {s['label_offset']:,}, cameras from {s['camera_offset']})"
    )
    if card["combineall"]:
      text += (
        f"; query + gallery joined: {s['joined_ids']:,} ids, {s['joined_images']:,} images "
        f"({s['left_out_images']:,} junk / distractor images left out)"
      )
    rows.append((f"train set {i + 1}", text))
  return rows


def format_run_card(card: Mapping[str, Any]) -> str:
  """The run card as an aligned two-column table (one string, no trailing newline)."""
  lr = "; ".join(
    f"{row['what']} {row['lr']:.4g} (epoch {row['epoch']}, step {row['step']:,})"
    for row in card["lr"]
  )
  model = card["model"]
  rows = [
    ("config", card["config"] or "-"),
    ("dataset", _dataset_text(card)),
    *_training_set_rows(card),
    (
      "batch",
      f"P x K = {card['P']} x {card['K']} = {card['global_batch']}, sampler {card['sampler']}",
    ),
    (
      "epochs",
      f"{card['epochs']} x {card['steps_per_epoch']:,} steps = {card['total_steps']:,} steps "
      f"(epoch length: {card['epoch_length']}; sampler epoch {card['sampler_steps_per_epoch']:,})",
    ),
    ("lr", f"{card['lr_schedule']}: {lr}"),
    (
      "model",
      f"last stride {model['last_stride']}, MHSA {tuple(model['mhsa_stages']) or 'none'}, "
      f"ECA {model['eca_placement']}, fusion {model['fusion']}, {model['dtype']}; "
      f"{card['parameters']:,} parameters",
    ),
    (
      "init",
      f"{card['pretrained'] or '(none)'}: {card['pretrained_parameters_set']:,} parameters set, "
      f"{card['parameters_left_at_init']:,} at init"
      + ("; attention blocks' last BN scale 0" if card["zero_init_attention_bn"] else "")
      + (
        f"; from {os.path.basename(card['pretrained_source'])} "
        f"(sha256 {card['pretrained_source_sha256'][:16]})"
        if card.get("pretrained_source_sha256")
        else ""
      ),
    ),
    (
      "devices",
      f"{card['devices']} {card['platform']} in {card['processes']} process(es), mesh "
      f"{card['mesh']}, {card['per_device_batch']} images per device",
    ),
  ]
  width = max(len(name) for name, _ in rows)
  return "\n".join(["Run card"] + [f"  {name:<{width}}  {value}" for name, value in rows])


def write_run_card(card: Mapping[str, Any], workdir: str | os.PathLike) -> epath.Path:
  """Writes `WORKDIR/run_card.json`; returns its path."""
  path = epath.Path(workdir) / FILE_NAME
  path.write_text(json.dumps(card, indent=2) + "\n")
  return path
