r"""Embeddings for any folder of images, and the serialised feature extractor.

  python -m fsaf_jax.extract --config=configs/tiny.py --images=FOLDER \
      --out=FEATURES.npz (--workdir=DIR | --config.init.pretrained=FILE | --random_weights) \
      [--export=FILE] [--onnx=FILE] [--batch_size=N] [--skip_corrupt]

Images: *.jpg / *.jpeg / *.png (any case; OS litter such as `._*` files ignored: the
name rule of the dataset builders, `data_pipelines.datasets.naming.is_image_name`)
under FOLDER, recursively, in sorted order of their paths relative to FOLDER; decoded
with PIL, converted to RGB whatever their mode (`data_pipelines.augment.to_rgb`: 16-bit
grayscale scaled, transparency composited onto white) and resized to
`config.input.image_size` (bilinear). A file that does not decode (or whose mode has no
RGB meaning, e.g. float 'F') stops the run with one line naming it, or with
`--skip_corrupt` is left out and listed; a folder without images is an error.

Weights: from the latest checkpoint in `--workdir` (a work dir, its `checkpoints/`
folder or one `checkpoints/<step>`), or the ImageNet backbone of
`--config.init.pretrained=FILE` (or `=imagenet`: the official release, cached); an
untrained network only with `--random_weights` (features of random weights are
meaningless for retrieval, so this is never a default).
The output paths are checked before any work starts.

Output .npz: `feats` float32 [N, C] (L2-normalised, flip-averaged when
`--config.eval.flip=True`), `file_names` str [N] (relative to FOLDER), `pids` and
`camids` int32 [N] parsed from the base names when they follow a known dataset scheme
(Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP; camid 0-based), else -1 (Market's
junk images keep their pid -1 and a real camid). `--export=FILE` also writes
the `jax.export` extractor (symbolic batch, weights inside): load it with
`fsaf_jax.evaluation.exported.load_exported(FILE)`. `--onnx=FILE` writes the same
extractor as ONNX (`fsaf_jax.evaluation.onnx_export`; input 'images' uint8 [b, H, W, 3],
output 'embeddings'), for onnxruntime or TensorRT: needs the optional extra
(`pip install -r requirements-onnx.txt`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import PIL.Image
from absl import app, flags, logging
from etils import epath
from flax import linen as nn
from jax.sharding import Mesh
from ml_collections import config_flags

from data_pipelines import augment, eval_pipeline
from data_pipelines.datasets import image_check, naming
from fsaf_jax import imagenet_weights
from fsaf_jax.core import checkpoint_restore, cli, errors, host_allocator
from fsaf_jax.core.distributed import maybe_initialize_distributed
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.core.paths import DEFINE_path
from fsaf_jax.evaluation import export as export_lib
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.evaluation import onnx_export
from fsaf_jax.models import pretrained, registry
from fsaf_jax.training import setup

IMAGE_EXTENSIONS = naming.IMAGE_EXTENSIONS


class ImagesNotADirectoryError(errors.UserError, NotADirectoryError):
  """--images is not a directory."""


class NoWeightsError(errors.UserError):
  """Neither trained nor pretrained weights were given (and no --random_weights)."""


# --- Images. ----------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
  """Image files (`naming.is_image_name`) under local `folder`, recursive, sorted."""
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise ImagesNotADirectoryError(
      f"--images={folder} is not a directory"
      + (" (it is a file)" if root.exists() else " (it does not exist)")
    )
  paths = [p for p in root.rglob("*") if naming.is_image_name(p.name) and p.is_file()]
  if not paths:
    raise errors.InputNotFoundError(
      f"no {'/'.join(IMAGE_EXTENSIONS)} images under --images={folder}"
    )
  return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def load_image(path: str | os.PathLike, image_size: tuple[int, int]) -> np.ndarray:
  """Decodes `path` as RGB resized to `image_size` (H, W): uint8 [H, W, 3].

  Same decoding as the evaluation pipeline (`data_pipelines.augment.decode_image`:
  PIL, `to_rgb`, bilinear resize), so a dataset image gets the same embedding either way.

  Raises:
    CorruptImageError: naming `path`: empty, truncated or undecodable bytes, or a mode
      without an RGB conversion.
  """
  data = pathlib.Path(path).read_bytes()
  if not data:
    raise image_check.CorruptImageError(f"cannot decode image {path}: empty file (0 bytes)")
  try:
    with image_check.strict_pil():
      return augment.decode_image(data, image_size)
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise image_check.CorruptImageError(
      f"cannot decode image {path}: {errors.one_line(str(e))}",
      hint="replace or remove the file, or pass --skip_corrupt to leave it out (listed)",
    ) from e


def parse_ids(file_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(pids, camids) int32 [N] from the base names; -1 where no dataset scheme applies.

  Uses `data_pipelines.datasets.naming.parse_person_camera` (Market-1501,
  DukeMTMC-reID, MSMT17, CUHK03-NP names; camid 0-based) on the base name: the
  builders' rule, so `X.JPG` parses as `X.jpg` in both.
  """
  pids = np.full(len(file_names), -1, np.int32)
  camids = np.full(len(file_names), -1, np.int32)
  for i, name in enumerate(file_names):
    try:
      pids[i], camids[i] = naming.parse_person_camera(os.path.basename(name))
    except ValueError:
      pass
  return pids, camids


class ReadFolderImage(grain.transforms.Map):
  """Index -> the evaluation record (`eval_pipeline.ReadEvalRecord`'s keys) of the image
  `paths[index]`: decoded by `load_image`, ids from `parse_ids`, `file_name` relative to
  `root`.

  An image that does not decode raises `CorruptImageError` naming it, or with a
  `skipped` list gets `valid` False (masked out of its batch) and (index, file name,
  reason) appended to `skipped`.
  """

  def __init__(
    self,
    paths: Sequence[pathlib.Path],
    root: pathlib.Path,
    image_size: tuple[int, int],
    skipped: list[tuple[int, str, str]] | None = None,
  ):
    self._paths, self._image_size, self._skipped = paths, image_size, skipped
    self._names = [p.relative_to(root).as_posix() for p in paths]
    self._pids, self._camids = parse_ids(self._names)

  def map(self, index: int) -> dict[str, Any]:
    path, name, valid = self._paths[index], self._names[index], True
    try:
      image = load_image(path, self._image_size)
    except image_check.CorruptImageError as e:
      if self._skipped is None:
        raise
      reason = str(e).removeprefix(f"cannot decode image {path}: ")
      self._skipped.append((index, name, reason))
      image, valid = np.zeros((*self._image_size, 3), np.uint8), False
    return {
      "image": image,
      "person_id": self._pids[index],
      "camera_id": self._camids[index],
      "file_name": name,
      "index": np.int64(index),
      "valid": valid,
    }


def folder_batches(
  paths: Sequence[pathlib.Path],
  root: pathlib.Path,
  *,
  image_size: tuple[int, int],
  batch_size: int,
  num_threads: int = 4,
  skipped: list[tuple[int, str, str]] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation batches of the images at `paths` (fixed size, last one padded):
  `eval_pipeline.create_eval_batches` over `ReadFolderImage` records (`mask` False on
  padding rows and on skipped images).

  Args:
    skipped: None: an image that does not decode raises `CorruptImageError` naming
      it. A list: such images are masked out and (index, file name, reason) appended.
  """
  read = ReadFolderImage(paths, root, image_size, skipped)
  return eval_pipeline.create_eval_batches(
    paths, batch_size, image_size, num_threads=num_threads, read=read
  )


# --- Variables. -------------------------------------------------------------------------


def embedding_model(
  config: ml_collections.ConfigDict, workdir: str | None, mesh: Mesh
) -> tuple[nn.Module, dict[str, Any]]:
  """The model to embed with and its `{'params', 'batch_stats'}`.

  With `workdir`: the latest intact checkpoint there (`checkpoint_restore.restore_variables`;
  `config.model` and `config.input.image_size` must describe its model,
  `checkpoint_restore.inference_config`: a differing field is an
  IncompatibleCheckpointError naming it, `model.num_classes` -1 means "the
  checkpoint's"). Without: the variables a training run of `config` starts from
  (`training.setup.initial_variables`: the config's seed, `config.init.pretrained`).
  """
  if not workdir:
    num_classes = max(int(config.model.num_classes), 1)  # the classifier is not used here
    model, variables, _ = setup.initial_variables(config, num_classes, mesh)
    return model, variables
  try:
    saved, variables = checkpoint_restore.restore_variables(workdir)
  except FileNotFoundError as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.InputNotFoundError(f"--workdir={workdir}: {e}") from e
  config = checkpoint_restore.inference_config(config, saved, f"--workdir={workdir}")
  return registry.create_model(config.model, int(config.model.num_classes)), variables


def check_arguments(
  config: ml_collections.ConfigDict,
  *,
  images: str,
  out: str,
  workdir: str | None,
  export: str | None,
  random_weights: bool,
  onnx: str | None = None,
) -> None:
  """The checks of `extract_folder` that need no work: weights chosen, paths usable.

  Raises:
    NoWeightsError: no `workdir`, no `config.init.pretrained` and not `random_weights`,
      or `random_weights` together with one of them.
    UserError: `out` / `export` not writable (or a directory), `images` or the
      pretrained file missing.
  """
  # 'scratch' (a training setting: random init on purpose) names no file either.
  pretrained_file = pretrained.pretrained_file(config.init.pretrained)
  if not workdir and not pretrained_file and not random_weights:
    raise NoWeightsError(
      "no weights to embed with: neither --workdir (a trained run) nor "
      "--config.init.pretrained (ImageNet backbone) is given",
      hint="pass --workdir=DIR or --config.init.pretrained=FILE; --random_weights embeds "
      "with the untrained network on purpose (features meaningless for retrieval)",
    )
  if random_weights and (workdir or pretrained_file):
    given = f"--workdir={workdir}" if workdir else f"--config.init.pretrained={pretrained_file}"
    raise NoWeightsError(f"--random_weights contradicts {given}: pass one of them")
  if (
    pretrained_file
    and pretrained_file != imagenet_weights.IMAGENET
    and "://" not in pretrained_file
    and not os.path.isfile(pretrained_file)
  ):
    raise errors.InputNotFoundError(f"--config.init.pretrained={pretrained_file}: no such file")
  cli.check_output_file(out, "--out")
  if export:
    cli.check_output_file(export, "--export")
  if export and os.path.abspath(os.path.expanduser(out)) == os.path.abspath(
    os.path.expanduser(export)
  ):
    raise errors.UserError(f"--out and --export name the same file {out}")
  if onnx:
    onnx_export.import_jax2onnx()  # the extra is installed, before any work
    cli.check_output_file(onnx, "--onnx")
    for flag, other in (("--out", out), ("--export", export)):
      if other and cli.same_file(onnx, other):
        raise errors.UserError(f"{flag} and --onnx name the same file {onnx}")
  if not os.path.isdir(images):
    list_images(images)  # the error naming --images


# --- Driver. ----------------------------------------------------------------------------


def extract_folder(
  config: ml_collections.ConfigDict,
  *,
  images: str,
  out: str,
  workdir: str | None = None,
  export: str | None = None,
  batch_size: int | None = None,
  random_weights: bool = False,
  skip_corrupt: bool = False,
  onnx: str | None = None,
) -> dict[str, np.ndarray]:
  """Embeds every image under `images` and writes `out` (.npz); see module docstring.

  Args:
    config: the model's config (`config.init.pretrained`: ImageNet backbone weights).
    images: folder of images.
    out: the .npz to write.
    workdir: training work dir (or checkpoint) whose weights to use.
    export: also write the `jax.export` extractor here.
    batch_size: default `config.input.eval_batch_size`.
    random_weights: allow embedding with the untrained network (no workdir, no
      pretrained file).
    skip_corrupt: leave out (and list, in a warning) images that do not decode instead
      of failing.
    onnx: also write the extractor as ONNX here (`onnx_export.export_onnx`).

  Returns:
    The arrays written: `feats` [N, C], `file_names` [N], `pids` [N], `camids` [N].

  Raises:
    UserError (one line, naming the flag / file): no weights chosen, the output paths
    are not writable, `images` holds no image, an image does not decode (without
    `skip_corrupt`).
  """
  check_arguments(
    config,
    images=images,
    out=out,
    workdir=workdir,
    export=export,
    random_weights=random_weights,
    onnx=onnx,
  )
  check_batch_size(config, batch_size)
  config = imagenet_weights.resolve_config(config)  # 'imagenet': the cached release
  image_size = tuple(config.input.image_size)
  root = pathlib.Path(images)
  paths = list_images(root)
  mesh = make_mesh()
  model, variables = embedding_model(config, workdir, mesh)
  batch_size = _device_batch(
    int(config.input.eval_batch_size if batch_size is None else batch_size), len(paths)
  )
  extractor = extractor_lib.make_extractor(
    model,
    variables,
    batch_size=batch_size,
    image_size=image_size,
    flip=config.eval.flip,
    mesh=mesh,
  )
  logging.info("Embedding %d images from %s, batches of %d", len(paths), root, batch_size)
  skipped: list[tuple[int, str, str]] | None = [] if skip_corrupt else None
  batches = folder_batches(
    paths, root, image_size=image_size, batch_size=batch_size, skipped=skipped
  )
  feats, pids, camids, names = _embed(extractor, batches, skipped, len(paths), images)
  logging.info("%d of %d names follow a known dataset scheme", (camids != -1).sum(), len(pids))
  result = {"feats": feats, "file_names": names, "pids": pids, "camids": camids}
  write_npz(result, out)
  _write_extractors(model, variables, config, export=export, onnx=onnx)
  return result


def _write_extractors(model, variables, config, *, export: str | None, onnx: str | None) -> None:
  """Writes the extractor as `jax.export` bytes to `export` and as ONNX to `onnx` (each
  when given), at the config's image size and flip setting."""
  image_size = tuple(config.input.image_size)
  if export:
    export_lib.export_extractor(
      model, variables, export, image_size=image_size, flip=config.eval.flip
    )
    logging.info("Wrote the exported extractor to %s", export)
  if onnx:
    onnx_export.export_onnx(model, variables, onnx, image_size=image_size, flip=config.eval.flip)
    logging.info("Wrote the ONNX extractor to %s", onnx)


def _embed(
  extractor: extractor_lib.Extractor,
  batches: Iterator[dict[str, np.ndarray]],
  skipped: list[tuple[int, str, str]] | None,
  num_images: int,
  images: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """`extractor_lib.extract_features` of `batches`, the skipped images listed in one
  warning line. Raises CorruptImageError if none of the `num_images` decodes."""
  try:
    feats, pids, camids, names = extractor_lib.extract_features(extractor, batches)
  except ValueError as e:
    if skipped and len(skipped) == num_images:
      raise image_check.CorruptImageError(
        f"none of the {num_images} images under --images={images} decodes: "
        + "; ".join(f"{n} ({r})" for _, n, r in sorted(skipped)[:5])
      ) from e
    raise
  if skipped:
    logging.warning(
      "Skipped %d image(s) that do not decode: %s",
      len(skipped),
      "; ".join(f"{n} ({r})" for _, n, r in sorted(skipped)),
    )
  return feats, pids, camids, names


def check_batch_size(config: ml_collections.ConfigDict, batch_size: int | None) -> None:
  """Raises UserError for `--batch_size` < 1, or (without it)
  `config.input.eval_batch_size` < 1."""
  if batch_size is not None and int(batch_size) < 1:
    raise errors.UserError(f"--batch_size={batch_size}: must be >= 1")
  if batch_size is None and int(config.input.eval_batch_size) < 1:
    raise errors.UserError(
      f"config.input.eval_batch_size={config.input.eval_batch_size}: must be >= 1"
    )


def _device_batch(batch_size: int, num_images: int) -> int:
  """`batch_size` cut to what `num_images` fill (no all-padding compute), rounded up to a
  multiple of the local devices."""
  local = jax.local_device_count()
  batch_size = min(batch_size, -(-num_images // local) * local)
  return -(-batch_size // local) * local


def write_npz(arrays: dict[str, np.ndarray], out: str) -> None:
  """Writes `arrays` to the .npz `out` through a temporary file (never a half-written
  `out`). Raises UserError (one line) if it cannot be written."""
  out_path = epath.Path(out)
  partial = out_path.parent / f".{out_path.name}.partial"
  try:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("wb") as f:
      np.savez(f, **arrays)
    partial.replace(out_path)
  except OSError as e:
    partial.unlink(missing_ok=True)
    raise errors.UserError(f"cannot write --out={out}: {errors.one_line(str(e))}") from e
  logging.info("Wrote %s: feats %s", out_path, arrays["feats"].shape)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.check_address_space("extract")  # JAX would abort below it
  host_allocator.configure_for(_CONFIG.value, _HOST_ALLOCATOR.value)  # CPU: XLA's buffers mapped
  maybe_initialize_distributed()  # multi-host: join the other processes
  extract_folder(
    _CONFIG.value,
    images=_IMAGES.value,
    out=_OUT.value,
    workdir=_WORKDIR.value,
    export=_EXPORT.value,
    batch_size=_BATCH_SIZE.value,
    random_weights=_RANDOM_WEIGHTS.value,
    skip_corrupt=_SKIP_CORRUPT.value,
    onnx=_ONNX.value,
  )


if __name__ == "__main__":
  cli.show_only_ours()  # third-party log lines only with --verbosity=1
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  _WORKDIR = DEFINE_path("workdir", None, "Work dir whose latest checkpoint to use.")
  _IMAGES = DEFINE_path("images", None, "Folder of images (searched recursively).")
  _OUT = DEFINE_path("out", None, "Output .npz.")
  _EXPORT = DEFINE_path("export", None, "Also write the jax.export extractor here.")
  _ONNX = DEFINE_path(
    "onnx", None, "Also write the extractor as ONNX here (needs requirements-onnx.txt)."
  )
  _BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Default: config.input.eval_batch_size.")
  _HOST_ALLOCATOR = host_allocator.define_flag()
  _RANDOM_WEIGHTS = flags.DEFINE_bool(
    "random_weights",
    False,
    "Embed with the untrained network (no --workdir, no --config.init.pretrained) on purpose.",
  )
  _SKIP_CORRUPT = flags.DEFINE_bool(
    "skip_corrupt", False, "Leave out (and list) images that do not decode instead of failing."
  )
  flags.mark_flags_as_required(["config", "images", "out"])
  cli.run(main)
