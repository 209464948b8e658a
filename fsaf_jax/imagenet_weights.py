"""`config.init.pretrained='imagenet'`: the backbone's official ImageNet release, by name.

  python train.py --config=configs/fsaf_market.py --workdir=W --config.init.pretrained=imagenet

`resolve_config` (called by train.py and `fsaf_jax.extract`) replaces 'imagenet' with a
converted file in the cache folder (`$FSAF_CACHE`, default `~/.cache/fsaf_jax`):

1. the release of the backbone (`RELEASES`: ResNet50-IBN-a of the IBN-Net release for
   `model.ibn_stages` non-empty, torchvision's ResNet-50 for a plain ResNet) is
   downloaded once to `<cache>/<file name>` and its SHA-256 checked against the prefix
   its name carries (`fsaf_jax.core.download`);
2. it is converted once for the model's layout (`fsaf_jax.convert_ibn.convert_file`,
   which needs PyTorch) to `<cache>/<file stem>.<layout digest>.msgpack`;
3. later runs reuse the converted file: no download, no PyTorch.

The URL base of every release can be replaced with `$FSAF_WEIGHTS_URL` (a mirror, or a
local server in tests). The run card names the source file and its SHA-256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

import ml_collections

from data_pipelines import errors
from fsaf_jax import convert_ibn
from fsaf_jax.core import download
from fsaf_jax.models import pretrained

IMAGENET = pretrained.IMAGENET
CACHE_ENV = "FSAF_CACHE"
URL_ENV = "FSAF_WEIGHTS_URL"
DEFAULT_CACHE = "~/.cache/fsaf_jax"


@dataclasses.dataclass(frozen=True)
class Release:
  """An official ImageNet checkpoint: `url_base`/`file_name` (the name carries the
  SHA-256 prefix)."""

  file_name: str
  url_base: str


RELEASES = {
  "resnet50_ibn_a": Release(
    pretrained.IBN_A_RELEASE, "https://github.com/XingangPan/IBN-Net/releases/download/v1.0"
  ),
  "resnet50": Release("resnet50-0676ba61.pth", "https://download.pytorch.org/models"),
}


def release_for(model_config: ml_collections.ConfigDict) -> Release:
  """The release of `model.backbone`: IBN-a with `ibn_stages`, else the plain ResNet-50.

  Raises:
    UserError: a backbone without an ImageNet release here.
  """
  if model_config.backbone != "resnet_ibn_a":
    raise errors.UserError(
      f"config.init.pretrained={IMAGENET!r}: no ImageNet release is known for "
      f"model.backbone={model_config.backbone!r}",
      hint="convert a checkpoint with `python -m fsaf_jax.convert_ibn SRC.pth DST` and pass "
      "--config.init.pretrained=DST",
    )
  return RELEASES["resnet50_ibn_a" if tuple(model_config.ibn_stages) else "resnet50"]


def cache_dir() -> pathlib.Path:
  """`$FSAF_CACHE`, default `~/.cache/fsaf_jax` (user expanded)."""
  return pathlib.Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def release_url(release: Release) -> str:
  """The release's URL, its base replaced by `$FSAF_WEIGHTS_URL` when set."""
  base = os.environ.get(URL_ENV) or release.url_base
  return f"{base.rstrip('/')}/{release.file_name}"


def fetch_converted(config: ml_collections.ConfigDict) -> pathlib.Path:
  """The converted ImageNet file for `config.model`, downloaded and converted if absent.

  Args:
    config: a run config (`model`, `input.image_size`).

  Returns:
    The path of the converted file in `cache_dir()`.

  Raises:
    DownloadError: offline, cut off or a hash mismatch (naming the URL, the cache path
      and the manual steps).
    UserError: PyTorch is missing for the one-time conversion (saying how to install
      the CPU build), or the release does not fit the model (`ConversionError`).
  """
  model_config = config.model.copy_and_resolve_references()
  model_config.num_classes = -1  # the classifier is not converted
  image_size = tuple(config.input.image_size)
  release = release_for(model_config)
  _, layout = convert_ibn.model_entries(model_config, image_size)
  digest = hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()[:8]
  cache = cache_dir()
  stem = release.file_name.rsplit(".", 1)[0]
  converted = cache / f"{stem}.{digest}.msgpack"
  if converted.is_file():
    return converted
  url = release_url(release)
  source = cache / release.file_name
  manual = (
    "then rerun (it converts the file once), or convert it yourself with `python -m "
    f"fsaf_jax.convert_ibn {source} DST --config=<this config>` and pass "
    "--config.init.pretrained=DST"
  )
  download.download_verified(url, source, manual=manual)
  convert_config = config.copy_and_resolve_references()
  convert_config.model = model_config
  try:
    convert_ibn.convert_file(source, converted, convert_config)
  except ImportError as e:  # PyTorch missing: the message says how to install the CPU build
    raise errors.UserError(
      f"config.init.pretrained={IMAGENET!r}: {source} is downloaded, but {e}",
      hint=f"or convert it on a machine with PyTorch (`python -m fsaf_jax.convert_ibn {source} "
      f"{converted}`) and copy {converted} here",
    ) from e
  return converted


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with `init.pretrained='imagenet'` replaced by `fetch_converted`'s file.

  Other values return `config` itself.
  """
  if config.init.pretrained != IMAGENET:
    return config
  resolved = config.copy_and_resolve_references()
  resolved.init.pretrained = os.fspath(fetch_converted(config))
  return resolved
