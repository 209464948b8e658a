"""Models and backbones by name: `config.model.name` and `config.model.backbone`.

  model = create_model(config.model, num_classes)   # an unbound Flax module
  check_model_config(config.model, image_size)       # every field, no weights made

A backbone builder `build(model_config, dtype) -> nn.Module` reads its own fields of
`config.model` and returns an unbound module that maps normalised images [N, H, W, 3]
to a dict of feature maps holding at least 'conv5' (and 'conv3', 'conv4' for
`model.fusion='concat'`), computing in `dtype` (its `dtype` attribute). A model
builder `build(model_config, num_classes, backbone) -> nn.Module` puts a head on that
backbone.

Backbones are plug-ins: every module of the package `fsaf_jax.models.backbones` is
imported on the first look-up, and each registers its builder with
`@register_backbone('<name>')` (`fsaf_jax.models.plugin` holds the tables). Adding a
backbone is therefore one new file in `fsaf_jax/models/backbones/` plus a config that
sets `config.model.backbone = '<name>'` (and whatever fields its builder reads).
`register_backbone` / `register_model` may also be called from anywhere else (tests,
an outside package) before `create_model`.
"""

__all__ = [
  "DTYPES",
  "backbone_names",
  "check_model_config",
  "create_backbone",
  "create_model",
  "model_names",
  "parse_dtype",
  "register_backbone",
  "register_model",
]

import importlib
import pkgutil
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from data_pipelines.errors import UserError
from fsaf_jax.models import backbones, plugin
from fsaf_jax.models.plugin import register_backbone, register_model

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

_plugins_loaded = False
_checked_models: set[tuple[str, tuple[int, int]]] = set()  # check_model_config


def _load_plugins() -> None:
  """Imports every module of `fsaf_jax.models.backbones` once (they register themselves)."""
  global _plugins_loaded
  if not _plugins_loaded:
    for module in pkgutil.iter_modules(backbones.__path__):
      importlib.import_module(f"{backbones.__name__}.{module.name}")
    _plugins_loaded = True


def backbone_names() -> tuple[str, ...]:
  """The registered backbone names, sorted."""
  _load_plugins()
  return tuple(sorted(plugin.BACKBONES))


def model_names() -> tuple[str, ...]:
  """The registered model names, sorted."""
  return tuple(sorted(plugin.MODELS))


def parse_dtype(name: str) -> Any:
  """'float32' | 'bfloat16' -> the jnp dtype; UserError (a ValueError) naming `model.dtype`
  otherwise."""
  if name not in DTYPES:
    raise UserError(f"model.dtype={name!r}: must be one of {tuple(DTYPES)}")
  return DTYPES[name]


def create_backbone(model_config: ml_collections.ConfigDict) -> nn.Module:
  """The unbound backbone `model_config.backbone` names, computing in `model_config.dtype`.

  Raises:
    ValueError: unknown backbone name, or a field its builder rejects (named).
  """
  _load_plugins()
  name = model_config.backbone
  if name not in plugin.BACKBONES:
    raise UserError(f"model.backbone={name!r}: must be one of {backbone_names()}")
  return plugin.BACKBONES[name](model_config, parse_dtype(model_config.dtype))


def create_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
  """Builds the model `config.model` describes.

  Args:
    model_config: the `model` section of a config (fields of `configs/base.py`).
    num_classes: training identities of the dataset. `model_config.num_classes` is -1
      (take this value) or must equal it.

  Returns:
    An unbound Flax module (parameters in float32, compute in `model.dtype`);
    `model.init` gives `{'params', 'batch_stats'}`.

  Raises:
    UserError (a ValueError): a field has an unsupported value (the message names it).
  """
  if model_config.num_classes not in (-1, num_classes):
    raise UserError(
      f"model.num_classes={model_config.num_classes} but the dataset has {num_classes} "
      "training identities: set model.num_classes=-1 (take it from the dataset) or fix it"
    )
  if model_config.name not in plugin.MODELS:
    raise UserError(f"model.name={model_config.name!r}: must be one of {model_names()}")
  backbone = create_backbone(model_config)
  return plugin.MODELS[model_config.name](model_config, num_classes, backbone)


def check_model_config(model_config: ml_collections.ConfigDict, image_size: Any) -> None:
  """Checks every field of `config.model` before any data work by building the model
  abstractly: `create_model`, then `jax.eval_shape` of its `init` on one image of
  `image_size` (H, W), which makes no parameter (milliseconds to seconds of tracing;
  each distinct config once per process).

  Args:
    model_config: the `model` section; `num_classes` -1 (from the data) is checked with
      two classes.
    image_size: (H, W) of the input (already checked: two positive integers).

  Raises:
    UserError: a field has an unsupported value (the message names it).
  """
  image_size = tuple(int(s) for s in image_size)
  key = (model_config.to_json(), image_size)
  if key in _checked_models:
    return
  num_classes = model_config.num_classes if model_config.num_classes > 0 else 2
  model = create_model(model_config, num_classes)
  image = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), image)
  _checked_models.add(key)
