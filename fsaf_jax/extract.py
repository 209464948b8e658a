r"""Embeddings for any folder of images, and the serialised feature extractor.

  python -m fsaf_jax.extract --config=configs/tiny.py --images=FOLDER \
      --out=FEATURES.npz [--workdir=DIR] [--export=FILE] [--batch_size=N]

Images: *.jpg / *.jpeg / *.png (any case) under FOLDER, recursively, in sorted order
of their paths relative to FOLDER; decoded with PIL as RGB and resized to
`config.input.image_size` (bilinear). A file that does not decode is an error naming
it; a folder without images is an error.

Weights: from the latest checkpoint in `--workdir`, or without `--workdir` from the
config's initialisation alone (random, or ImageNet weights with
`--config.init.pretrained=FILE`).

Output .npz: `feats` float32 [N, C] (L2-normalised, flip-averaged when
`--config.eval.flip=True`), `file_names` str [N] (relative to FOLDER), `pids` and
`camids` int32 [N] parsed from the base names when they follow a known dataset scheme
(Market-1501, DukeMTMC-reID, MSMT17, CUHK03-NP; camid 0-based), else -1 (Market's
junk images keep their pid -1 and a real camid). `--export=FILE` also writes
the `jax.export` extractor (symbolic batch, weights inside): load it with
`fsaf_jax.evaluation.export.load_exported(FILE)`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import PIL.Image
from absl import app, flags, logging
from etils import epath
from jax.sharding import Mesh
from ml_collections import config_flags

from data_pipelines import augment
from data_pipelines.datasets import naming
from fsaf_jax import host_allocator
from fsaf_jax.evaluation import evaluator
from fsaf_jax.evaluation import export as export_lib
from fsaf_jax.evaluation import extractor as extractor_lib
from fsaf_jax.models import fsaf
from fsaf_jax.training import checkpoint, train_state

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# --- Images. ----------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[pathlib.Path]:
  """Image files (IMAGE_EXTENSIONS, any case) under local `folder`, recursive, sorted."""
  root = pathlib.Path(folder)
  if not root.is_dir():
    raise NotADirectoryError(f"--images={folder} is not a directory")
  paths = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
  if not paths:
    raise ValueError(f"no {'/'.join(IMAGE_EXTENSIONS)} images under {folder}")
  return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def load_image(path: str | os.PathLike, image_size: tuple[int, int]) -> np.ndarray:
  """Decodes `path` as RGB resized to `image_size` (H, W): uint8 [H, W, 3].

  Same decoding as the evaluation pipeline (`data_pipelines.augment.decode_image`:
  PIL, bilinear resize), so a dataset image gets the same embedding either way.
  """
  try:
    return augment.decode_image(pathlib.Path(path).read_bytes(), image_size)
  except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
    raise ValueError(f"cannot decode image {path}: {e}") from e


def parse_ids(file_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(pids, camids) int32 [N] from the base names; -1 where no dataset scheme applies.

  Uses `data_pipelines.datasets.naming.parse_person_camera` (Market-1501,
  DukeMTMC-reID, MSMT17, CUHK03-NP names; camid 0-based), on the base name with its
  extension lower-cased (`X.JPG` parses as `X.jpg`).
  """
  pids = np.full(len(file_names), -1, np.int32)
  camids = np.full(len(file_names), -1, np.int32)
  for i, name in enumerate(file_names):
    stem, ext = os.path.splitext(os.path.basename(name))
    try:
      pids[i], camids[i] = naming.parse_person_camera(stem + ext.lower())
    except ValueError:
      pass
  return pids, camids


def folder_batches(
  paths: Sequence[pathlib.Path],
  root: pathlib.Path,
  *,
  image_size: tuple[int, int],
  batch_size: int,
  pids: np.ndarray,
  camids: np.ndarray,
  num_threads: int = 4,
) -> Iterator[dict[str, np.ndarray]]:
  """Evaluation batches of the images at `paths` (fixed size, last one padded).

  Yields dicts `image` uint8 [batch_size, H, W, 3], `person_id`, `camera_id` int32,
  `mask` bool (False on padding rows) and `file_name` str (relative to `root`), the
  format of `data_pipelines.input_pipeline.create_eval_batches`.
  """
  h, w = image_size
  load = functools.partial(load_image, image_size=image_size)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = paths[start : start + batch_size]
      n, pad = len(chunk), batch_size - len(chunk)
      image = np.zeros((batch_size, h, w, 3), np.uint8)
      image[:n] = np.stack(list(pool.map(load, chunk)))
      sl = slice(start, start + n)
      yield {
        "image": image,
        "person_id": np.pad(pids[sl], (0, pad), constant_values=-1),
        "camera_id": np.pad(camids[sl], (0, pad), constant_values=-1),
        "mask": np.arange(batch_size) < n,
        "file_name": np.array([p.relative_to(root).as_posix() for p in chunk] + [""] * pad),
      }


# --- Variables. -------------------------------------------------------------------------


def init_variables(config: ml_collections.ConfigDict, model: Any) -> dict[str, Any]:
  """Variables from the config alone, exactly as training starts from them.

  `fsaf_jax.training.train_state.init_variables` with the config's seed: `model.init`,
  then `config.init.pretrained` (a converted file; '' or 'scratch' = none).

  Returns {'params', 'batch_stats'}.
  """
  variables, _ = train_state.init_variables(
    config, model, jax.random.key(config.seed), tuple(config.input.image_size), data_mesh()
  )
  return variables


def restore_variables(
  config: ml_collections.ConfigDict, workdir: str
) -> tuple[int, dict[str, Any]]:
  """Trained {'params', 'batch_stats'} of the latest checkpoint in `workdir`.

  Returns:
    (num_classes of the checkpoint's classifier, host variables). `config.model` and
    `config.input.image_size` must describe the checkpoint's model
    (`evaluator.inference_config`: a differing field is an IncompatibleCheckpointError,
    a ValueError, naming it; `model.num_classes` -1 means "the checkpoint's").
  """
  saved, variables = checkpoint.restore_variables(workdir)
  config = evaluator.inference_config(config, saved, f"--workdir={workdir}")
  return int(config.model.num_classes), variables


def data_mesh() -> Mesh:
  """1-D mesh over all devices with axis 'data'."""
  return Mesh(np.asarray(jax.devices()), (extractor_lib.DATA_AXIS,))


# --- Driver. ----------------------------------------------------------------------------


def extract_folder(
  config: ml_collections.ConfigDict,
  *,
  images: str,
  out: str,
  workdir: str | None = None,
  export: str | None = None,
  batch_size: int | None = None,
) -> dict[str, np.ndarray]:
  """Embeds every image under `images` and writes `out` (.npz); see module docstring.

  Returns the arrays written: `feats` [N, C], `file_names` [N], `pids` [N], `camids` [N].
  """
  image_size = tuple(config.input.image_size)
  root = pathlib.Path(images)
  paths = list_images(root)
  file_names = [p.relative_to(root).as_posix() for p in paths]
  pids, camids = parse_ids(file_names)
  logging.info("%d of %d names follow a known dataset scheme", (camids != -1).sum(), len(pids))

  if workdir:
    num_classes, variables = restore_variables(config, workdir)
    model = fsaf.create_model(config.model, num_classes)
  else:
    num_classes = max(int(config.model.num_classes), 1)  # the classifier is not used here
    model = fsaf.create_model(config.model, num_classes)
    variables = init_variables(config, model)

  mesh = data_mesh()
  local = jax.local_device_count()
  batch_size = int(batch_size or config.input.eval_batch_size)
  batch_size = min(batch_size, -(-len(paths) // local) * local)  # no all-padding compute
  batch_size = -(-batch_size // local) * local  # a multiple of the local devices
  extractor = extractor_lib.make_extractor(
    model,
    variables,
    batch_size=batch_size,
    image_size=image_size,
    flip=config.eval.flip,
    mesh=mesh,
  )
  logging.info("Embedding %d images from %s, batches of %d", len(paths), root, batch_size)
  batches = folder_batches(
    paths, root, image_size=image_size, batch_size=batch_size, pids=pids, camids=camids
  )
  feats, pids, camids, names = extractor_lib.extract_features(extractor, batches)
  result = {"feats": feats, "file_names": names, "pids": pids, "camids": camids}
  out_path = epath.Path(out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with out_path.open("wb") as f:
    np.savez(f, **result)
  logging.info("Wrote %s: feats %s", out_path, feats.shape)

  if export:
    export_lib.export_extractor(
      model, variables, export, image_size=image_size, flip=config.eval.flip
    )
    logging.info("Wrote the exported extractor to %s", export)
  return result


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  host_allocator.configure_for(_CONFIG.value)  # CPU: keep XLA's buffers mapped
  extract_folder(
    _CONFIG.value,
    images=_IMAGES.value,
    out=_OUT.value,
    workdir=_WORKDIR.value,
    export=_EXPORT.value,
    batch_size=_BATCH_SIZE.value,
  )


if __name__ == "__main__":
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Work dir whose latest checkpoint to use.")
  _IMAGES = flags.DEFINE_string("images", None, "Folder of images (searched recursively).")
  _OUT = flags.DEFINE_string("out", None, "Output .npz.")
  _EXPORT = flags.DEFINE_string("export", None, "Also write the jax.export extractor here.")
  _BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Default: config.input.eval_batch_size.")
  flags.mark_flags_as_required(["config", "images", "out"])
  app.run(main)
