"""Run configs as JSON and the differences between two of them.

A checkpoint stores its run's config as JSON (`config_to_json`); reading it back
(`config_from_json`) gives tuples where the config had tuples. `config_differences`
lists the dotted fields whose values differ, for the checks that refuse a checkpoint
of another config (resume, inference). `config_name` names a run's config from its
`--config` argument.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections


def config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as a JSON-compatible nested dict (tuples become lists)."""
  return json.loads(config.to_json())


def _tuples(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list | tuple):
    return tuple(_tuples(v) for v in x)
  return x


def config_from_json(data: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of `config_to_json`: a ConfigDict whose JSON lists are tuples again."""
  return ml_collections.ConfigDict(_tuples(dict(data)))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def field_in(field: str, patterns: Sequence[str]) -> bool:
  """Whether dotted `field` is one of `patterns` ('a.b') or under one ('a.')."""
  return any(field.startswith(f) if f.endswith(".") else field == f for f in patterns)


def config_differences(
  saved: ml_collections.ConfigDict | Mapping[str, Any],
  current: ml_collections.ConfigDict | Mapping[str, Any],
  *,
  ignore: Callable[[str], bool],
  label: str = "this run",
) -> list[str]:
  """Fields whose values differ, one line per field, except those `ignore` accepts.

  Args:
    saved: the checkpoint's config (ConfigDict or its JSON dict).
    current: the config of the run that wants to resume (or to use the checkpoint).
    ignore: `ignore(dotted_field)` True = the field may differ.
    label: how `current` is named in the lines.

  Returns:
    Sorted lines `'<field>: checkpoint <value>, <label> <value>'` (a field missing
    from one side shows `<absent>`); empty if the configs are compatible.
  """
  to_flat = lambda c: _flatten(  # noqa: E731
    _tuples(config_to_json(c) if isinstance(c, ml_collections.ConfigDict) else c)
  )
  a, b = to_flat(saved), to_flat(current)
  lines = []
  for field in sorted(set(a) | set(b)):
    if ignore(field):
      continue
    va, vb = a.get(field, "<absent>"), b.get(field, "<absent>")
    if va != vb:
      lines.append(f"{field}: checkpoint {va!r}, {label} {vb!r}")
  return lines


def config_name(config_file: str) -> str:
  """The name a run records for its `--config` argument (run card, metrics.json):
  'configs/fsaf.py:market,fsaf' -> 'fsaf:market,fsaf', 'configs/demo.py' -> 'demo'."""
  path, sep, argument = config_file.partition(":")
  return os.path.splitext(os.path.basename(path))[0] + sep + argument
