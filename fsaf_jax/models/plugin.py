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


def register_backbone(name: str) -> Callable[[BackboneBuilder], BackboneBuilder]:
  """Decorator: registers a backbone builder under `name` (ValueError if taken)."""

  def register(builder: BackboneBuilder) -> BackboneBuilder:
    if name in BACKBONES and BACKBONES[name] is not builder:
      raise ValueError(f"a backbone named {name!r} is already registered")
    BACKBONES[name] = builder
    return builder

  return register


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
  """Decorator: registers a model builder under `name` (ValueError if taken)."""

  def register(builder: ModelBuilder) -> ModelBuilder:
    if name in MODELS and MODELS[name] is not builder:
      raise ValueError(f"a model named {name!r} is already registered")
    MODELS[name] = builder
    return builder

  return register
