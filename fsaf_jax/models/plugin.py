"""The tables of models and backbones by name, and the decorators that fill them.

A backbone plug-in (a module of `fsaf_jax.models.backbones`) registers its builder with
`@register_backbone('<name>')`; `registry.create_model` looks the names of
`config.model.name` / `config.model.backbone` up here (see `registry`).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from fsaf_jax.models import fsaf

BackboneBuilder = Callable[[ml_collections.ConfigDict, Any], nn.Module]
ModelBuilder = Callable[[ml_collections.ConfigDict, int, nn.Module], nn.Module]

BACKBONES: dict[str, BackboneBuilder] = {}
MODELS: dict[str, ModelBuilder] = {"fsaf": fsaf.build_fsaf}


def _registrar(table: dict[str, Any], kind: str, name: str) -> Callable[[Any], Any]:
  """Decorator registering a builder in `table` under `name` (ValueError if taken)."""

  def register(builder):
    if name in table and table[name] is not builder:
      raise ValueError(f"a {kind} named {name!r} is already registered")
    table[name] = builder
    return builder

  return register


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
  """Decorator: registers a backbone builder under `name` (ValueError if taken)."""
  return _registrar(BACKBONES, "backbone", name)


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
  """Decorator: registers a model builder under `name` (ValueError if taken)."""
  return _registrar(MODELS, "model", name)
