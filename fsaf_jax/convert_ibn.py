r"""Converts an IBN-Net / torchvision ResNet checkpoint to a Flax-native pretrained file.

  python -m fsaf_jax.convert_ibn resnet50_ibn_a-d9d0bb7b.pth r50_ibn_a.msgpack
  python -m fsaf_jax.convert_ibn SRC.pth DST --config=configs/fsaf_market.py   # check a layout
  python train.py --config=configs/fsaf_market.py --config.init.pretrained=r50_ibn_a.msgpack

SRC is a PyTorch state_dict (bare, with a `module.` prefix, or wrapped as
`{'state_dict': ...}` / `{'model': ...}`) of the official ResNet50-IBN-a (keys
`conv1.weight`, `layer1.0.bn1.IN.weight`, ...) or of a torchvision-style plain ResNet.
The conversion is a table from the model's parameter paths to the PyTorch keys
(`backbone/layer1_0/bn1/IN/scale` <- `layer1.0.bn1.IN.weight`,
`.../downsample_conv/kernel` <- `downsample.0.weight`, ...): conv OIHW -> HWIO, BN
weight/bias/running_mean/running_var -> scale/bias/mean/var, IN weight/bias -> scale/bias,
every shape checked. It prints which checkpoint tensors were not used (`fc.*`, the 3x3
convs the model replaces by MHSA, anything unexpected) and which model entries stay at
their initial values (MHSA, ECA, head).

The layout converted for is `--config`'s model (default: the plain ResNet50-IBN-a of
`configs/baseline.py`, which every FSAF variant of that depth accepts: the training code
drops the 3x3 convs of MHSA blocks, reporting them). DST holds only the converted
backbone entries (see `fsaf_jax.models.pretrained`); training never needs PyTorch.

PyTorch is imported lazily, only here: `pip install torch --index-url
https://download.pytorch.org/whl/cpu` (the CPU build is enough).
"""

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import traverse_util
from ml_collections import config_flags

from data_pipelines import errors, logs, paths
from fsaf_jax.core import download
from fsaf_jax.models import fsaf, pretrained, registry
from fsaf_jax.models.backbone import Backbone
from fsaf_jax.models.head import BNNeckHead

TORCH_INSTALL = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
WRAPPER_KEYS = ("state_dict", "model")  # Lightning/IBN-Net trainers, fast-reid/detectron2
PREFIX = "module."  # nn.DataParallel / DistributedDataParallel
IGNORED_SUFFIX = "num_batches_tracked"
# Backbone fields that fix the converted entries; recorded in the file's metadata.
LAYOUT_FIELDS = (
  "stage_sizes",
  "stem_width",
  "widths",
  "ibn_stages",
  "mhsa_stages",
  "num_heads",
  "eca_placement",
)
DEFAULT_IMAGE_SIZE = (256, 128)

Path = tuple[str, ...]

_LEAVES = {  # Flax leaf -> PyTorch leaf
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
}
_MODULES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
_FLAX_BLOCK = re.compile(r"^layer(\d+)_(\d+)$")
_TORCH_CONV2 = re.compile(r"^layer(\d+)\.(\d+)\.conv2\.weight$")


class ConversionError(errors.UserError):
  """The checkpoint cannot be converted for the model (the message says why)."""


# --- Reading the checkpoint. ------------------------------------------------------------


def _import_torch():
  try:
    import torch  # noqa: PLC0415 (lazy: only the conversion needs PyTorch)
  except ImportError as e:
    raise ImportError(
      "converting a PyTorch checkpoint needs PyTorch (only for this one-off step; "
      f"training does not): install the CPU build with `{TORCH_INSTALL}`"
    ) from e
  return torch


def load_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint file into a flat state dict of numpy arrays.

  Uses `torch.load(map_location='cpu', weights_only=True)` (no code from the file runs).

  Args:
    path: a `.pth` / `.pt` file.

  Returns:
    See `extract_state_dict`.

  Raises:
    ConversionError: the file is missing, is not a PyTorch checkpoint, or holds no
      state dict.
  """
  torch = _import_torch()
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ConversionError(f"checkpoint {path!r} does not exist")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle / zip / weights-only errors of many types
    raise ConversionError(
      f"{path!r} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})"
    ) from e
  return extract_state_dict(obj, source=path)


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  value = value.detach().cpu()
  if value.is_floating_point():
    value = value.float()  # bf16/fp16 checkpoints: numpy has no bfloat16
  return value.numpy()


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, np.ndarray]:
  """Unwraps and normalises a loaded checkpoint object.

  Args:
    obj: what `torch.load` returned: a state dict, possibly wrapped in
      `{'state_dict': ...}` or `{'model': ...}`, keys possibly prefixed `module.`.
    source: name of the file, for messages.

  Returns:
    {key: array} with the `module.` prefix removed, `*.num_batches_tracked` dropped and
    floating tensors as float32 numpy arrays.

  Raises:
    ConversionError: not a mapping of tensors, or empty.
  """
  for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
    if isinstance(obj, Mapping):
      wrapped = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
      if wrapped:
        obj = obj[wrapped[0]]
        continue
    break
  if not isinstance(obj, Mapping):
    raise ConversionError(
      f"{source} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)"
    )
  state_dict = {}
  for key, value in obj.items():
    if not isinstance(key, str):
      raise ConversionError(f"{source}: key {key!r} is not a string; not a state_dict")
    name = key[len(PREFIX) :] if key.startswith(PREFIX) else key
    if name.endswith(IGNORED_SUFFIX):
      continue
    if not (hasattr(value, "detach") or isinstance(value, np.ndarray)):
      raise ConversionError(
        f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a "
        f"state_dict, optionally wrapped as {{'state_dict': ...}} or {{'model': ...}}"
      )
    if name in state_dict:
      raise ConversionError(f"{source}: key {name!r} occurs with and without {PREFIX!r}")
    state_dict[name] = _to_numpy(value)
  if not state_dict:
    raise ConversionError(f"{source} holds no tensors")
  return state_dict


# --- The model side. --------------------------------------------------------------------


def default_model() -> fsaf.FSAF:
  """The plain ResNet50-IBN-a layout (`configs/baseline.py`: no MHSA, ECA or fusion)."""
  return fsaf.FSAF(
    backbone=Backbone(mhsa_stages=(), eca_placement="none"),
    head=BNNeckHead(num_classes=1),
    fusion="none",
  )


def model_entries(
  model_config: ml_collections.ConfigDict | None = None,
  image_size: Sequence[int] = DEFAULT_IMAGE_SIZE,
) -> tuple[dict[Path, jax.ShapeDtypeStruct], dict[str, Any]]:
  """Shapes of every model variable, without computing anything (`jax.eval_shape`).

  Args:
    model_config: a config's `model` section; None: `default_model()`.
    image_size: (H, W) input size (MHSA tables depend on it; converted entries don't).

  Returns:
    ({('params' | 'batch_stats', 'backbone', ...): ShapeDtypeStruct}, layout): the
    flattened variables and the model fields in `LAYOUT_FIELDS`.
  """
  model = default_model() if model_config is None else registry.create_model(model_config, 1)
  x = jax.ShapeDtypeStruct((1, *image_size, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
  layout = {}
  for field in LAYOUT_FIELDS:
    value = getattr(model.backbone, field)
    layout[field] = list(value) if isinstance(value, tuple | list) else value
  return traverse_util.flatten_dict(dict(shapes)), layout


def torch_key(path: Path) -> str | None:
  """PyTorch key of a backbone variable, or None outside the backbone.

  ('params', 'backbone', 'layer1_0', 'bn1', 'IN', 'scale') -> 'layer1.0.bn1.IN.weight';
  ('batch_stats', 'backbone', 'layer2_0', 'downsample_bn', 'mean') ->
  'layer2.0.downsample.1.running_mean'.
  """
  if len(path) < 3 or path[1] != "backbone" or path[-1] not in _LEAVES:
    return None
  modules = [_MODULES.get(m, _FLAX_BLOCK.sub(r"layer\1.\2", m)) for m in path[2:-1]]
  return ".".join([*modules, _LEAVES[path[-1]]])


def _expected_torch_shape(shape: Sequence[int]) -> tuple[int, ...]:
  """PyTorch shape of a Flax kernel / vector shape: HWIO -> OIHW, (K, I, O) -> (O, I, K)."""
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if len(shape) in (2, 3):
    return tuple(reversed(shape))
  return tuple(shape)


def _from_torch(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
  if value.ndim in (2, 3):
    return np.ascontiguousarray(value.T)  # (out, in) -> (in, out); (O, I, K) -> (K, I, O)
  return value


def _is_new_module(path: Path) -> bool:
  """Entries with no ImageNet-ResNet counterpart: MHSA, ECA, the head."""
  return path[1] == "head" or any(p == "mhsa" or p.startswith("eca") for p in path[2:])


# --- The conversion. --------------------------------------------------------------------


@dataclasses.dataclass
class Conversion:
  """Result of `convert_state_dict`; `report()` is the printed summary.

  Attributes:
    variables: {'params': nested, 'batch_stats': nested} float32 numpy arrays of the
      converted backbone entries (model paths).
    converted: model entries filled ('collection/path').
    unused: checkpoint keys not used, as groups: 'replaced by MHSA', 'ImageNet
      classifier', 'unexpected'.
    left_at_init: model entries not in the checkpoint, as groups: 'no ImageNet
      counterpart' (MHSA, ECA, head) and 'missing from the checkpoint'.
    ibn_from_bn: PyTorch modules (`layer1.0.bn1`) of a plain-BN checkpoint split onto
      the model's IBN-a norms.
  """

  variables: dict[str, Any]
  converted: list[str]
  unused: dict[str, list[str]]
  left_at_init: dict[str, list[str]]
  ibn_from_bn: list[str]

  def report(self) -> str:
    """Multi-line summary of what was converted, unused and left at init."""
    lines = [f"converted: {len(self.converted)} model entries"]
    for group, keys in self.unused.items():
      if keys:
        lines.append(pretrained.format_paths(f"checkpoint tensors unused ({group})", keys, "."))
    for group, names in self.left_at_init.items():
      if names:
        lines.append(pretrained.format_paths(f"model entries left at init ({group})", names))
    if self.ibn_from_bn:
      lines.append(
        pretrained.format_paths(
          "IBN-a norms filled from plain BatchNorm (torchvision-style checkpoint): the first "
          "channels' weight/bias -> IN scale/bias (their running stats dropped: IN uses "
          "per-image statistics, so these layers differ from the source net), the rest -> BN",
          self.ibn_from_bn,
          ".",
        )
      )
    return "\n".join(lines)


def _check_converted(
  state_dict: Mapping[str, np.ndarray],
  flat: Mapping[Path, np.ndarray],
  missing: Sequence[str],
  allow_missing: bool,
  source: str,
) -> None:
  """Raises ConversionError if nothing of `state_dict` was converted, or (unless
  `allow_missing`) backbone entries an ImageNet ResNet has are `missing`."""
  if not flat:
    sample = ", ".join(list(state_dict)[:6])
    raise ConversionError(
      f"{source}: none of its {len(state_dict)} tensors belongs to the model's backbone "
      f"(its keys start: {sample}); expected an IBN-Net / torchvision ResNet state_dict "
      "with keys like conv1.weight, bn1.running_mean, layer1.0.conv1.weight"
    )
  if missing and not allow_missing:
    raise ConversionError(
      f"{source} lacks backbone entries an ImageNet ResNet has; they would stay at their "
      "random initial values (pass --allow_missing to accept that).\n"
      + pretrained.format_paths("missing model entries", missing, limit=12)
    )


def _unused_tensors(
  state_dict: Mapping[str, np.ndarray], used: set[str], shapes: Mapping[Path, Any]
) -> dict[str, list[str]]:
  """The checkpoint keys not converted, by reason: 'replaced by MHSA' (a `conv2` of a
  block the model turns into MHSA), 'ImageNet classifier' (`fc.*`) or 'unexpected'."""
  model_modules = {path[:i] for path in shapes for i in range(1, len(path))}
  unused = {"replaced by MHSA": [], "ImageNet classifier": [], "unexpected": []}
  for key in state_dict:
    if key in used:
      continue
    conv2 = _TORCH_CONV2.match(key)
    if conv2 and ("params", "backbone", f"layer{conv2[1]}_{conv2[2]}", "mhsa") in model_modules:
      unused["replaced by MHSA"].append(key)
    elif key.startswith("fc."):
      unused["ImageNet classifier"].append(key)
    else:
      unused["unexpected"].append(key)
  return unused


def convert_state_dict(
  state_dict: Mapping[str, np.ndarray],
  entries: Mapping[Path, Any],
  *,
  allow_missing: bool = False,
  source: str = "checkpoint",
) -> Conversion:
  """Maps a PyTorch ResNet(-IBN-a) state dict onto the model's backbone variables.

  Args:
    state_dict: from `extract_state_dict` (keys without `module.`).
    entries: the model's flattened variable shapes (`model_entries()[0]`).
    allow_missing: don't fail when backbone convs/norms are absent from the checkpoint.
    source: name of the checkpoint, for messages.

  Returns:
    A `Conversion`.

  Raises:
    ConversionError: a shape differs (naming the key and both shapes), a used tensor
      holds NaN / inf (naming it), nothing matches, or ImageNet-ResNet entries are
      missing (unless `allow_missing`).
  """
  flat, used, ibn_from_bn = {}, set(), []
  missing, new = [], []
  # 'params' first: errors and reports then follow the module order.
  order = sorted(entries, key=lambda path: path[0] != "params")
  shapes = {path: tuple(entries[path].shape) for path in order}
  for path, shape in shapes.items():
    key = torch_key(path)
    name = "/".join(path)
    value = None
    if key is not None and key in state_dict:
      value = state_dict[key]
      want = _expected_torch_shape(shape)
      if value.shape != want:
        raise ConversionError(
          f"{source}: tensor {key!r} has shape {value.shape}, but the model entry {name} "
          f"{shape} needs {want} in PyTorch layout: the checkpoint does not fit the model "
          "layout (pass --config=<the training config> / check model.stage_sizes, "
          "stem_width, widths)"
        )
      check_finite_tensor(value, f"{source}: tensor {key!r}")  # indices in the checkpoint's layout
      value = _from_torch(value)
      used.add(key)
    elif key is not None and path[-3] == "bn1" and path[-2] in ("IN", "BN"):
      value = _split_plain_bn(state_dict, path, shapes, key, source)
      if value is not None:
        plain = key.rsplit(".", 2)[0]
        source_key = f"{plain}.{key.rsplit('.', 1)[1]}"
        check_finite_tensor(state_dict[source_key], f"{source}: tensor {source_key!r}")
        used.add(source_key)
        if plain not in ibn_from_bn:
          ibn_from_bn.append(plain)
    if value is None:
      (new if _is_new_module(path) else missing).append(name)
      continue
    flat[path] = np.asarray(value, np.float32)

  _check_converted(state_dict, flat, missing, allow_missing, source)
  unused = _unused_tensors(state_dict, used, shapes)
  return Conversion(
    variables=traverse_util.unflatten_dict(flat),
    converted=["/".join(p) for p in flat],
    unused=unused,
    left_at_init={"no ImageNet counterpart": new, "missing from the checkpoint": missing},
    ibn_from_bn=ibn_from_bn,
  )


def check_finite_tensor(value: np.ndarray, what: str) -> None:
  """Raises ConversionError naming `what` if `value` holds NaN or inf."""
  finite = np.isfinite(value)
  if not finite.all():
    bad = np.argwhere(~finite)[0]
    raise ConversionError(
      f"{what} has {int((~finite).sum())} non-finite value(s) (NaN/inf) of {value.size}, "
      f"first at index {tuple(int(i) for i in bad)} = {value[tuple(bad)]!r}: the checkpoint is "
      "damaged (or was saved after training diverged); get a clean copy"
    )


def _split_plain_bn(
  state_dict: Mapping[str, np.ndarray],
  path: Path,
  shapes: Mapping[Path, tuple[int, ...]],
  key: str,
  source: str,
) -> np.ndarray | None:
  """The IN or BN part of an IBN-a `bn1` entry, sliced from a plain `bn1.*` tensor."""
  plain = f"{key.rsplit('.', 2)[0]}.{key.rsplit('.', 1)[1]}"  # l.i.bn1.IN.weight -> l.i.bn1.weight
  if plain not in state_dict:
    return None
  norm = path[:-3] + ("bn1",)
  num_in = shapes[("params", *norm[1:], "IN", "scale")][0]
  num_bn = shapes[("params", *norm[1:], "BN", "scale")][0]
  value = state_dict[plain]
  if value.shape != (num_in + num_bn,):
    raise ConversionError(
      f"{source}: tensor {plain!r} has shape {value.shape}, but the model's IBN-a norm "
      f"{'/'.join(norm[1:])} needs ({num_in + num_bn},) (IN {num_in} + BN {num_bn})"
    )
  return value[:num_in] if path[-2] == "IN" else value[num_in:]


def convert_file(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  config: ml_collections.ConfigDict | None = None,
  *,
  allow_missing: bool = False,
) -> Conversion:
  """Converts the checkpoint `src` and writes the pretrained file `dst`.

  Args:
    src: PyTorch checkpoint (see the module docstring).
    dst: output file, read by `fsaf_jax.models.pretrained.load_pretrained`.
    config: full config whose `model` (and `input.image_size`) give the layout;
      None: the plain ResNet50-IBN-a layout.
    allow_missing: see `convert_state_dict`.

  Returns:
    The `Conversion` (its `report()` is what the CLI prints).

  Raises:
    UserError: `dst` cannot be written or is `src` (checked first); ConversionError (see
      `load_torch_checkpoint`, `convert_state_dict`).
  """
  src = os.fspath(src)
  errors.check_output_file(dst, "DST")
  if errors.same_file(dst, src):
    raise errors.UserError(f"DST={os.fspath(dst)} is SRC: the conversion would replace the source")
  state_dict = load_torch_checkpoint(src)
  if config is None:
    entries, layout = model_entries()
  else:
    entries, layout = model_entries(config.model, tuple(config.input.image_size))
  conversion = convert_state_dict(
    state_dict, entries, allow_missing=allow_missing, source=repr(src)
  )
  metadata = {
    "source": src,
    "source_sha256": download.sha256_file(src),
    "layout": layout,
    "converted_by": "fsaf_jax.convert_ibn",
    "unused_source_keys": {k: v for k, v in conversion.unused.items() if v},
    "ibn_from_bn": conversion.ibn_from_bn,
  }
  try:
    pretrained.save_pretrained(dst, conversion.variables, metadata)
  except OSError as e:
    raise errors.UserError(f"cannot write DST={os.fspath(dst)}: {errors.one_line(str(e))}") from e
  return conversion


def main(argv: Sequence[str]) -> None:
  if len(argv) != 3:
    raise app.UsageError(
      "usage: python -m fsaf_jax.convert_ibn SRC.pth DST [--config=configs/X.py] "
      f"[--allow_missing]; got arguments {list(argv[1:])}"
    )
  src, dst = (paths.resolve(a) for a in argv[1:])
  try:
    conversion = convert_file(src, dst, _CONFIG.value, allow_missing=_ALLOW_MISSING.value)
  except ImportError as e:  # PyTorch missing: the message says how to install it
    raise errors.UserError(str(e)) from e
  print(f"{src} -> {dst}")
  print(conversion.report())
  print(f"train from it with --config.init.pretrained={dst}")


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config whose model layout to convert for (default: the plain "
    "ResNet50-IBN-a layout of configs/baseline.py, accepted by every R50 FSAF variant).",
    lock_config=True,
  )
  _ALLOW_MISSING = flags.DEFINE_bool(
    "allow_missing",
    False,
    "Write the file even if backbone convs/norms that an ImageNet ResNet has are missing "
    "from the checkpoint (they stay at their initial values).",
  )
  errors.run(main)
