"""Pretrained backbone weights: the Flax-native file and its application to a model.

The file is written once by `python -m fsaf_jax.convert_ibn SRC.pth DST` (the only
place that needs PyTorch) and read at training time without torch:

  variables = model.init(rng, images, train=False)          # {'params', 'batch_stats'}
  variables, report = apply_pretrained(variables, load_pretrained(config.init.pretrained))
  logging.info('%s', report)                                 # what stayed at init

File format: `flax.serialization.msgpack_serialize` of

  {'params': {...}, 'batch_stats': {...}, 'metadata': '<json>'}

where the two collections hold only the converted (backbone) entries, with the model's
paths (`backbone/layer1_0/conv1/kernel`, ...), float32, and the metadata records the
format, the source checkpoint and the layout (model fields) it was converted for.

A file converted for the plain ResNet50-IBN-a layout (the default) serves every FSAF
variant of the same depth and widths: where the model has BoTNet MHSA instead of a
block's 3x3 conv, that block's `conv2/kernel` in the file is dropped and reported.
"""

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import flax
import jax
import numpy as np
from etils import epath
from flax import serialization, traverse_util

from data_pipelines import errors
from fsaf_jax.core.whole_file import write_whole

FORMAT = "fsaf_jax.models.pretrained"
VERSION = 1
COLLECTIONS = ("params", "batch_stats")

Path = tuple[str, ...]
DROPPED_TITLE = "file entries not used (3x3 convs the model replaces by MHSA, or ignore_unused)"


# The official ImageNet-pretrained ResNet50-IBN-a of IBN-Net (a PyTorch state_dict).
IBN_A_RELEASE = "resnet50_ibn_a-d9d0bb7b.pth"
# `config.init.pretrained` value that asks for random initialisation on purpose.
SCRATCH = "scratch"
# `config.init.pretrained` value naming the backbone's official ImageNet release, which
# train.py and `fsaf_jax.extract` download and convert once (`fsaf_jax.imagenet_weights`).
IMAGENET = "imagenet"


class PretrainedError(errors.UserError):
  """A pretrained file or its application to a model is invalid (the message says why)."""


class MissingPretrainedError(PretrainedError):
  """A run that needs ImageNet weights names none (`config.init.pretrained` empty)."""


def pretrained_file(setting: str) -> str | None:
  """The file named by `config.init.pretrained`, or None for random initialisation.

  Args:
    setting: the config value: a path, `SCRATCH` ('scratch': random init on purpose)
      or '' (random init; training refuses it, see `train_state.check_initialisation`).
  """
  return None if setting in ("", SCRATCH) else setting


# --- Path reports. ----------------------------------------------------------------------

_BLOCK = re.compile(r"^(?P<prefix>.*?layer\d+[._])(?P<index>\d+)(?P<rest>[./].+)$")


def _index_set(indices: Iterable[int]) -> str:
  indices = sorted(set(indices))
  if len(indices) == 1:
    return str(indices[0])
  if indices == list(range(indices[0], indices[-1] + 1)):
    return f"{{{indices[0]}..{indices[-1]}}}"
  return "{" + ",".join(map(str, indices)) + "}"


def summarize_paths(paths: Iterable[str], sep: str = "/") -> list[str]:
  """Groups parameter paths or checkpoint keys into a few compact lines.

  Blocks are folded over their index and the leaves of one sub-module are listed
  together, e.g. the 27 MHSA entries of Conv4_x become
  `params/backbone/layer3_{0..5}/mhsa/{key/kernel,query/kernel,rel_h,rel_w,value/kernel}`
  and the PyTorch keys `layer3.0.conv2.weight` ... `layer3.5.conv2.weight` become
  `layer3.{0..5}.conv2.weight`.

  Args:
    paths: '/'-separated Flax paths or '.'-separated PyTorch keys, in display order.
    sep: the separator of `paths`.

  Returns:
    One line per group, in order of first appearance.
  """
  groups: dict[str, tuple[set[int], list[str]]] = {}  # head (with '{}' for the index)
  for path in paths:
    match = _BLOCK.match(path)
    if match:
      module, _, leaf = match["rest"][1:].partition(sep)
      head = f"{match['prefix']}{{}}" + (f"{sep}{module}" if leaf else "")
      leaf = leaf or module
      index = int(match["index"])
    else:
      head, _, leaf = path.rpartition(sep)
      index = -1
    indices, leaves = groups.setdefault(head, (set(), []))
    indices.add(index)
    if leaf not in leaves:
      leaves.append(leaf)
  lines = []
  for head, (indices, leaves) in groups.items():
    head = head.replace("{}", _index_set(indices))  # no-op outside blocks
    leaf = leaves[0] if len(leaves) == 1 else "{" + ",".join(sorted(leaves)) + "}"
    lines.append(f"{head}{sep}{leaf}" if head else leaf)
  return lines


def format_paths(title: str, paths: Sequence[str], sep: str = "/", limit: int = 0) -> str:
  """'title: count' then the `summarize_paths` lines indented (at most `limit` if > 0)."""
  lines = summarize_paths(paths, sep)
  if limit and len(lines) > limit:
    lines = [*lines[:limit], f"... and {len(lines) - limit} more groups"]
  return "\n".join([f"{title}: {len(paths)}", *(f"  {line}" for line in lines)])


# --- The file. --------------------------------------------------------------------------


def save_pretrained(
  path: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, Any]
) -> None:
  """Writes converted backbone variables to `path` (see the module docstring).

  Written to a temporary file renamed into place: `path` is never left half-written.

  Args:
    path: destination file (local or any `etils.epath` path).
    variables: {'params': nested dict, 'batch_stats': nested dict} of arrays.
    metadata: JSON-serialisable record (source, layout, ...); `format` and `version`
      are added.
  """
  tree = {
    c: jax.tree.map(lambda a: np.asarray(a, np.float32), dict(variables.get(c, {})))
    for c in COLLECTIONS
  }
  tree["metadata"] = json.dumps({"format": FORMAT, "version": VERSION, **metadata})
  write_whole(path, serialization.msgpack_serialize(tree))  # never a half-written `path`


def load_pretrained(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a file written by `python -m fsaf_jax.convert_ibn` (no torch needed).

  Args:
    path: the file (`config.init.pretrained`).

  Returns:
    {'params': nested dict, 'batch_stats': nested dict} of float32 numpy arrays, and
    'metadata': dict (format, version, source, layout, ...).

  Raises:
    PretrainedError: the file is missing or is not such a file (e.g. a PyTorch `.pth`
      that still needs converting), or an entry holds NaN / inf (naming it).
  """
  if os.fspath(path) == IMAGENET:
    raise PretrainedError(
      f"config.init.pretrained={IMAGENET!r} is not resolved: train.py and `python -m "
      "fsaf_jax.extract` replace it with the converted release; a caller of the library "
      "passes `fsaf_jax.imagenet_weights.resolve_config(config)`"
    )
  path = epath.Path(path)
  if not path.exists():
    raise PretrainedError(
      f"pretrained file {os.fspath(path)!r} does not exist: create it with "
      "`python -m fsaf_jax.convert_ibn SRC.pth DST` and pass DST"
    )
  if path.is_dir():
    raise PretrainedError(
      f"pretrained file {os.fspath(path)!r} is a directory: pass the file written by "
      "`python -m fsaf_jax.convert_ibn SRC.pth DST`"
    )
  data = path.read_bytes()
  not_ours = (
    f"{os.fspath(path)!r} is not a fsaf_jax pretrained file (written by "
    "`python -m fsaf_jax.convert_ibn SRC.pth DST`)"
  )
  if data[:2] == b"PK" or data[:1] == b"\x80":  # zip (torch >= 1.6) or legacy pickle
    raise PretrainedError(
      f"{not_ours}: it looks like a PyTorch checkpoint; convert it first with "
      f"`python -m fsaf_jax.convert_ibn {os.fspath(path)} OUT.msgpack`"
    )
  try:
    tree = serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise PretrainedError(f"{not_ours}: cannot decode it ({type(e).__name__}: {e})") from e
  if not isinstance(tree, dict) or not isinstance(tree.get("metadata"), str):
    raise PretrainedError(f"{not_ours}: no metadata record")
  try:
    metadata = json.loads(tree["metadata"])
  except json.JSONDecodeError as e:
    raise PretrainedError(f"{not_ours}: unreadable metadata ({e})") from e
  if metadata.get("format") != FORMAT:
    raise PretrainedError(f"{not_ours}: format is {metadata.get('format')!r}")
  if metadata.get("version", 0) > VERSION:
    raise PretrainedError(
      f"{os.fspath(path)!r} has format version {metadata['version']}, newer than this "
      f"fsaf_jax reads ({VERSION}): upgrade fsaf_jax or re-convert the checkpoint"
    )
  out = {"metadata": metadata}
  for collection in COLLECTIONS:
    entries = tree.get(collection, {})
    if not isinstance(entries, dict):
      raise PretrainedError(f"{not_ours}: '{collection}' is not a dict")
    for entry, value in traverse_util.flatten_dict(entries, sep="/").items():
      finite = np.isfinite(np.asarray(value, np.float32))
      if not finite.all():
        raise PretrainedError(
          f"pretrained file {os.fspath(path)!r}: entry {collection}/{entry} has "
          f"{int((~finite).sum())} non-finite value(s) (NaN/inf) of {finite.size}: the file is "
          "damaged; re-convert it from a clean checkpoint (`python -m fsaf_jax.convert_ibn`)"
        )
    out[collection] = entries
  return out


# --- Applying it to a model. ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainedReport:
  """What `apply_pretrained` did; `str(report)` is a compact multi-line summary.

  Attributes:
    loaded: model entries overwritten from the file ('collection/path' strings).
    left_at_init: model entries not in the file, kept at their initial values (MHSA,
      ECA, head, ...).
    dropped: file entries the model has no place for but were expected (the 3x3 convs
      of blocks where the model has MHSA, and any matching `ignore_unused`).
    source: the source checkpoint recorded in the file's metadata.
    source_sha256: its SHA-256 recorded there ('' if none).
  """

  loaded: tuple[str, ...]
  left_at_init: tuple[str, ...]
  dropped: tuple[str, ...]
  source: str = ""
  source_sha256: str = ""

  def __str__(self) -> str:
    parts = [f"{len(self.loaded)} entries loaded" + (f" from {self.source}" if self.source else "")]
    if self.dropped:
      parts.append(format_paths(DROPPED_TITLE, self.dropped))
    if self.left_at_init:
      parts.append(format_paths("model entries left at their initial values", self.left_at_init))
    return "\n".join(parts)


def _flatten(variables: Mapping[str, Any]) -> dict[Path, Any]:
  return traverse_util.flatten_dict(flax.core.unfreeze(variables))


def _name(path: Path) -> str:
  return "/".join(path)


def _replaced_by_mhsa(path: Path, model_modules: set[Path]) -> bool:
  """A block's `conv2/kernel` in the file where the model's block has `mhsa` instead."""
  return (
    len(path) >= 3 and path[-2:] == ("conv2", "kernel") and (*path[:-2], "mhsa") in model_modules
  )


def _place(value: np.ndarray, like: Any) -> Any:
  """`value` in the dtype of `like`, on its devices/sharding if `like` is a jax.Array."""
  value = np.asarray(value, dtype=like.dtype)
  if isinstance(like, jax.Array):
    return jax.device_put(value, like.sharding)
  return value


def _check_matches(
  source: str,
  layout: Any,
  mismatched: Sequence[str],
  unknown: Sequence[str],
  loaded: Sequence[str],
) -> None:
  """Raises PretrainedError if a file entry's shape differs from the model's
  (`mismatched`), the file holds entries the model lacks (`unknown`) or nothing loaded."""
  hint = (f" The file was converted for the layout {layout}." if layout else "") + (
    " Re-run `python -m fsaf_jax.convert_ibn SRC.pth DST --config=<the training config>` "
    "with the config you train, or fix the config."
  )
  if mismatched:
    raise PretrainedError(
      f"pretrained {source or 'file'}: {len(mismatched)} shape mismatch(es) with the model: "
      + "; ".join(mismatched[:10])
      + (f"; ... and {len(mismatched) - 10} more" if len(mismatched) > 10 else "")
      + "."
      + hint
    )
  if unknown:
    raise PretrainedError(
      f"pretrained {source or 'file'} holds entries the model does not have.\n"
      + format_paths("entries without a place in the model", unknown, limit=12)
      + "\n"
      + hint.strip()
    )
  if not loaded:
    raise PretrainedError(f"pretrained {source or 'file'} holds no entry of this model")


def apply_pretrained(
  variables: Mapping[str, Any],
  pretrained: Mapping[str, Any] | str | os.PathLike,
  *,
  ignore_unused: Sequence[str] = (),
) -> tuple[dict[str, Any], PretrainedReport]:
  """Overwrites freshly initialised model variables with pretrained backbone entries.

  Args:
    variables: the model's {'params', 'batch_stats', ...} (from `model.init`); numpy or
      jax arrays (jax arrays keep their sharding). Other collections pass through.
    pretrained: `load_pretrained(path)`'s result, or the path itself.
    ignore_unused: regular expressions (`re.fullmatch` on 'collection/path') of file
      entries the model may lack without an error.

  Returns:
    (variables, report): a new variables dict with the file's entries in place (the
    input is not modified), and a `PretrainedReport` of what was loaded, dropped and
    left at init.

  Raises:
    PretrainedError: a shape differs (naming the path and both shapes), or the file
      holds entries the model does not have (it was converted for another layout),
      or nothing in the file matches the model.
  """
  if not isinstance(pretrained, Mapping):
    pretrained = load_pretrained(pretrained)
  metadata = pretrained.get("metadata", {})
  source = str(metadata.get("source", ""))
  model = _flatten(variables)
  model_modules = {path[:i] for path in model for i in range(1, len(path))}
  file_entries = _flatten({c: pretrained.get(c, {}) for c in COLLECTIONS})
  patterns = [re.compile(p) for p in ignore_unused]

  out = dict(model)
  loaded, dropped, unknown, mismatched = [], [], [], []
  for path, value in file_entries.items():
    name = _name(path)
    if path not in model:
      if _replaced_by_mhsa(path, model_modules) or any(p.fullmatch(name) for p in patterns):
        dropped.append(name)
      else:
        unknown.append(name)
      continue
    value = np.asarray(value)
    if value.shape != tuple(model[path].shape):
      mismatched.append(f"{name}: file {value.shape} vs model {tuple(model[path].shape)}")
      continue
    out[path] = _place(value, model[path])
    loaded.append(name)

  _check_matches(source, metadata.get("layout"), mismatched, unknown, loaded)
  loaded_set = set(loaded)
  left = tuple(name for name in map(_name, model) if name not in loaded_set)
  report = PretrainedReport(
    loaded=tuple(loaded),
    left_at_init=left,
    dropped=tuple(dropped),
    source=source,
    source_sha256=str(metadata.get("source_sha256", "")),
  )
  result = traverse_util.unflatten_dict(out)
  if isinstance(variables, flax.core.FrozenDict):
    result = flax.core.freeze(result)
  return result, report
