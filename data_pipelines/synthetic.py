r"""Embedded synthetic person-ReID dataset, written in the exact Market-1501 layout.

  python -m data_pipelines.synthetic --out=/tmp/synth [--ids=200 --seed=0 ...]

writes `OUT/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}/` with
Market names (`0002_c1s1_000451_03.jpg`: pid, camera c1..c6, sequence s1..s6, frame,
box), 128x64 JPEGs, junk boxes (pid `-1`) and distractors (pid `0000`) in
`bounding_box_test`, so the real Market-1501 builder and the whole pipeline run with no
download. Train and test identities are disjoint; every query identity also appears in
the gallery under other cameras (one query per camera, as Market). The bytes written are
a pure function of the seed and the flags. The people are drawn by
`data_pipelines.synthetic_render` (sibling identities share colour multisets, so colour
alone does not identify a person; see there).

Also writes `OUT/synthetic.json` (the generator's configuration and the identities'
attributes, for inspection; the Market builder ignores it).

It never writes into a folder that already holds a dataset (a Market-1501 split
folder, images or a .zip archive in OUT or up to three levels below it), other than
its own earlier output (`--overwrite` replaces that): the builders would find two
copies there, or mix the synthetic images into a real dataset.
"""

import collections
import dataclasses
import json
import os
import pathlib
import shutil
import time
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from data_pipelines import errors, logs, paths, synthetic_render

MARKET_DIR = "Market-1501-v15.09.15"
TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
SPLIT_DIRS = (TRAIN_DIR, QUERY_DIR, GALLERY_DIR)
MAX_CAMERAS = 6  # Market-1501 names carry c1..c6
MAX_PID = 9999  # four digits

META_FILE = "synthetic.json"
# What marks a folder as holding a dataset already (case-insensitive file extensions).
_DATASET_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".zip")
_DATASET_SEARCH_DEPTH = 3

# Independent random streams derived from the seed.
_IDENTITY_STREAM, _CAMERA_STREAM, _PLAN_STREAM, _IMAGE_STREAM = range(4)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Size, layout and difficulty of the generated dataset.

  Attributes:
    num_ids: identities in total (train + test).
    num_train_ids: training identities; -1 = `num_ids // 2`. The rest are test ids.
    train_images_per_id: images of each training identity in `bounding_box_train`.
    query_per_id: query images per test identity, each from a different camera.
    gallery_per_id: gallery images per test identity (`bounding_box_test`).
    num_cameras: cameras c1..cN (2..6).
    min_cameras_per_id: every identity is seen by this many cameras or more.
    num_distractors: pid-0000 images (poorly aligned boxes of other people) in the gallery.
    num_junk: pid -1 images (background, body fragments) in the gallery.
    image_size: (H, W) of the JPEGs.
    seed: everything is a function of it (and the fields above).
    difficulty: rendering knobs (`synthetic_render.Difficulty`).
  """

  num_ids: int = 200
  num_train_ids: int = -1
  train_images_per_id: int = 8
  query_per_id: int = 2
  gallery_per_id: int = 8
  num_cameras: int = 6
  min_cameras_per_id: int = 2
  num_distractors: int = 80
  num_junk: int = 40
  image_size: tuple[int, int] = (128, 64)
  seed: int = 0
  difficulty: synthetic_render.Difficulty = synthetic_render.Difficulty()

  @property
  def train_ids(self) -> int:
    return self.num_ids // 2 if self.num_train_ids == -1 else self.num_train_ids

  @property
  def test_ids(self) -> int:
    return self.num_ids - self.train_ids

  def validate(self) -> None:
    """Raises ValueError naming the first field that cannot produce a valid dataset."""

    def fail(field: str, msg: str):
      raise errors.UserError(f"SyntheticConfig.{field}={getattr(self, field)!r}: {msg}")

    if not 2 <= self.num_ids <= MAX_PID:
      fail("num_ids", f"need 2..{MAX_PID} identities (train and test each need one).")
    if self.num_train_ids != -1 and not 1 <= self.num_train_ids < self.num_ids:
      fail("num_train_ids", f"must be -1 or in 1..num_ids-1 = {self.num_ids - 1}.")
    if self.train_ids < 1 or self.test_ids < 1:
      fail("num_ids", "leaves no train or no test identity.")
    if not 2 <= self.num_cameras <= MAX_CAMERAS:
      fail("num_cameras", f"Market names carry cameras c1..c{MAX_CAMERAS}; need 2..6.")
    if not 2 <= self.min_cameras_per_id <= self.num_cameras:
      fail(
        "min_cameras_per_id",
        f"need 2..num_cameras={self.num_cameras} (queries need "
        "a gallery image from another camera).",
      )
    if self.train_images_per_id < 1:
      fail("train_images_per_id", "need at least 1.")
    if not 1 <= self.query_per_id <= self.min_cameras_per_id:
      fail(
        "query_per_id",
        f"need 1..min_cameras_per_id={self.min_cameras_per_id} (one "
        "query per camera, as Market-1501).",
      )
    if self.gallery_per_id < 2:
      fail("gallery_per_id", "need at least 2 (gallery images from two cameras).")
    if self.num_distractors < 0 or self.num_junk < 0:
      fail("num_distractors" if self.num_distractors < 0 else "num_junk", "must be >= 0.")
    if self.seed < 0:
      fail("seed", "must be >= 0.")
    if self.image_size[0] < 16 or self.image_size[1] < 8:
      fail("image_size", "need at least (16, 8).")
    self.difficulty.validate()


@dataclasses.dataclass(frozen=True)
class ImageSpec:
  """One image to render: where it goes and what it shows.

  Attributes:
    split: one of SPLIT_DIRS.
    file_name: Market-1501 name.
    pid: person id in the name (-1 junk, 0 distractor).
    camera: 1-based camera.
    kind: 'person' | 'distractor' | 'junk'.
    identity: index into the identity list (-1 for distractors and junk).
    index: position in the plan; seeds the image's own random generator.
  """

  split: str
  file_name: str
  pid: int
  camera: int
  kind: str
  identity: int
  index: int


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the generator writes: identities, their pids and splits, and every image."""

  identities: list[synthetic_render.Identity]
  pids: list[int]  # pid of identities[i]
  train: list[int]  # indices into identities
  test: list[int]
  images: list[ImageSpec]


def _rng(config: SyntheticConfig, *stream: int) -> np.random.Generator:
  return np.random.default_rng([config.seed, *stream])


def market_name(pid: int, camera: int, sequence: int, frame: int, box: int) -> str:
  """Market-1501 file name, e.g. (2, 1, 1, 451, 3) -> '0002_c1s1_000451_03.jpg'."""
  pid_str = "-1" if pid == -1 else f"{pid:04d}"
  return f"{pid_str}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg"


def make_plan(config: SyntheticConfig) -> Plan:
  """Identities, pid assignment, cameras per identity and every file to write.

  Raises:
    ValueError: if the config is invalid (see `SyntheticConfig.validate`).
  """
  config.validate()
  d = config.difficulty
  id_rng = _rng(config, _IDENTITY_STREAM)
  # Siblings stay in one split, so sibling confusion happens between test identities.
  train_idents = synthetic_render.make_identities(id_rng, config.train_ids, d)
  first_test_group = train_idents[-1].group + 1
  test_idents = synthetic_render.make_identities(
    id_rng, config.test_ids, d, first_group=first_test_group
  )
  identities = train_idents + test_idents
  train = list(range(config.train_ids))
  test = list(range(config.train_ids, config.num_ids))

  rng = _rng(config, _PLAN_STREAM)
  # Market-style pids: drawn from 1..max(1501, 2 * num_ids), train and test interleaved.
  pid_pool = min(MAX_PID, max(1501, 2 * config.num_ids))
  pids = [int(p) for p in rng.choice(np.arange(1, pid_pool + 1), config.num_ids, replace=False)]

  used_names: set[str] = set()
  images: list[ImageSpec] = []

  def add(split: str, pid: int, camera: int, kind: str, identity: int) -> None:
    while True:
      name = market_name(
        pid, camera, int(rng.integers(1, 7)), int(rng.integers(0, 200_000)), int(rng.integers(1, 9))
      )
      if name not in used_names:
        break
    used_names.add(name)
    images.append(ImageSpec(split, name, pid, camera, kind, identity, len(images)))

  def cameras_of_identity() -> np.ndarray:
    k = int(rng.integers(config.min_cameras_per_id, config.num_cameras + 1))
    return rng.choice(np.arange(1, config.num_cameras + 1), k, replace=False)

  def cycle(cams: np.ndarray, n: int) -> list[int]:
    order = rng.permutation(cams)
    return [int(order[i % len(order)]) for i in range(n)]

  for i in train:
    for cam in cycle(cameras_of_identity(), config.train_images_per_id):
      add(TRAIN_DIR, pids[i], cam, "person", i)
  for i in test:
    cams = cameras_of_identity()
    # Gallery cycles over all of the identity's cameras (>= 2 distinct), so every query
    # camera has a gallery image from another camera.
    for cam in cycle(cams, config.gallery_per_id):
      add(GALLERY_DIR, pids[i], cam, "person", i)
    for cam in rng.choice(cams, config.query_per_id, replace=False):
      add(QUERY_DIR, pids[i], int(cam), "person", i)
  for _ in range(config.num_distractors):
    add(GALLERY_DIR, 0, int(rng.integers(1, config.num_cameras + 1)), "distractor", -1)
  for _ in range(config.num_junk):
    add(GALLERY_DIR, -1, int(rng.integers(1, config.num_cameras + 1)), "junk", -1)
  return Plan(identities, pids, train, test, images)


def render_plan_image(
  config: SyntheticConfig,
  plan: Plan,
  spec: ImageSpec,
  cameras: Sequence[synthetic_render.Camera],
) -> bytes:
  """Renders and JPEG-encodes one planned image (a pure function of its inputs)."""
  rng = _rng(config, _IMAGE_STREAM, spec.index)
  cam = cameras[spec.camera - 1]
  if spec.kind == "person":
    ident = plan.identities[spec.identity]
  elif spec.kind == "distractor":
    ident = synthetic_render.random_identity(rng, config.difficulty)
  else:
    ident = None
  image = synthetic_render.render_image(
    rng, ident, cam, config.difficulty, config.image_size, kind=spec.kind
  )
  return synthetic_render.encode_jpeg(image, cam.jpeg_quality)


def split_statistics(plan: Plan) -> dict[str, dict[str, int]]:
  """Per split: images, identities (pid > 0), cameras, distractor and junk images."""
  stats = {}
  for split in SPLIT_DIRS:
    specs = [s for s in plan.images if s.split == split]
    stats[split] = dict(
      images=len(specs),
      ids=len({s.pid for s in specs if s.pid > 0}),
      cameras=len({s.camera for s in specs}),
      distractors=sum(s.pid == 0 for s in specs),
      junk=sum(s.pid == -1 for s in specs),
    )
  return stats


def existing_dataset(out_dir: str | pathlib.Path) -> pathlib.Path | None:
  """A path showing that `out_dir` already holds a dataset other than this generator's.

  Looks in `out_dir` and up to `_DATASET_SEARCH_DEPTH` levels of sub-folders for a
  Market-1501 split folder (`SPLIT_DIRS`) or a `.jpg` / `.jpeg` / `.png` / `.zip` file
  (any case), skipping `out_dir/MARKET_DIR` when `out_dir/META_FILE` says the generator
  wrote it.

  Returns:
    The first such path found (breadth first, sorted), or None.
  """
  out_dir = pathlib.Path(out_dir)
  own = out_dir / MARKET_DIR if (out_dir / META_FILE).is_file() else None
  if out_dir.name in SPLIT_DIRS:
    return out_dir
  level = [out_dir]
  for _ in range(_DATASET_SEARCH_DEPTH):
    deeper = []
    for folder in level:
      try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
      except OSError:
        continue
      for entry in entries:
        path = pathlib.Path(entry.path)
        if path == own:
          continue
        if entry.is_dir():
          if entry.name in SPLIT_DIRS:
            return path
          deeper.append(path)
        elif os.path.splitext(entry.name)[1].lower() in _DATASET_FILE_EXTENSIONS:
          return path
    level = deeper
  return None


def generate(out_dir: str | pathlib.Path, config: SyntheticConfig, overwrite: bool = False) -> Plan:
  """Writes the dataset under `out_dir/Market-1501-v15.09.15/` and returns its plan.

  Args:
    out_dir: output directory (created if missing).
    config: what to generate.
    overwrite: if the generator's own Market folder already exists, delete its split
      folders first; otherwise an existing non-empty folder is an error (stale files
      from another configuration would silently mix in).

  Raises:
    UserError: invalid config (naming the field); `out_dir` is a file, or already holds
      a dataset (`existing_dataset`), or a Market folder the generator did not write
      (even with `overwrite`: it is never deleted).
    OutputExistsError (a FileExistsError): the generator's earlier output is there and
      `overwrite` is False.
  """
  plan = make_plan(config)
  out_dir = pathlib.Path(out_dir)
  root = out_dir / MARKET_DIR
  if out_dir.exists() and not out_dir.is_dir():
    raise errors.UserError(f"synthetic output folder {out_dir} is a file")
  ours = (out_dir / META_FILE).is_file()
  if root.exists() and any(root.iterdir()) and not ours:
    raise errors.OutputExistsError(
      f"{root} exists but was not written by data_pipelines.synthetic (no {out_dir / META_FILE}):"
      " a real dataset is never overwritten",
      hint="choose another output folder",
    )
  found = existing_dataset(out_dir)
  if found is not None:
    raise errors.OutputExistsError(
      f"{out_dir} already holds a dataset ({found}): the synthetic generator writes only "
      "into an empty folder or one holding its own earlier output",
      hint="choose another output folder (python -m data_pipelines.synthetic --out=DIR; for "
      "train.py leave config.input.manual_dir empty: WORKDIR/data/synthetic)",
    )
  if root.exists() and any(root.iterdir()):
    if not overwrite:
      raise errors.OutputExistsError(
        f"{root} already exists and is not empty; pass overwrite=True (--overwrite) to "
        "replace it or choose another --out."
      )
    for split in SPLIT_DIRS:
      shutil.rmtree(root / split, ignore_errors=True)
  for split in SPLIT_DIRS:
    (root / split).mkdir(parents=True, exist_ok=True)
  cameras = synthetic_render.make_cameras(
    _rng(config, _CAMERA_STREAM), config.num_cameras, config.difficulty, config.image_size
  )
  for spec in plan.images:
    (root / spec.split / spec.file_name).write_bytes(render_plan_image(config, plan, spec, cameras))
  meta = dict(
    generator="data_pipelines.synthetic",
    config=dataclasses.asdict(config),
    statistics=split_statistics(plan),
    identities=[
      dict(pid=pid, split="train" if i < config.train_ids else "test", **dataclasses.asdict(ident))
      for i, (pid, ident) in enumerate(zip(plan.pids, plan.identities, strict=True))
    ],
  )
  (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
  return plan


def format_statistics(plan: Plan) -> str:
  """Table of `split_statistics`, one line per split."""
  stats = split_statistics(plan)
  lines = [f"{'split':<20}{'ids':>6}{'images':>8}{'cameras':>9}{'distractors':>13}{'junk':>6}"]
  for split, s in stats.items():
    lines.append(
      f"{split:<20}{s['ids']:>6}{s['images']:>8}{s['cameras']:>9}{s['distractors']:>13}{s['junk']:>6}"
    )
  per_id = collections.Counter(s.pid for s in plan.images if s.split == TRAIN_DIR)
  if per_id:
    lines.append(f"train images per id: {min(per_id.values())}..{max(per_id.values())}")
  return "\n".join(lines)


# ---------------------------------------------------------------------------- CLI ---

_D = synthetic_render.Difficulty()
_C = SyntheticConfig()


def config_from_flags() -> SyntheticConfig:
  """The SyntheticConfig the command-line flags describe."""
  return SyntheticConfig(
    num_ids=_IDS.value,
    num_train_ids=_TRAIN_IDS.value,
    train_images_per_id=_TRAIN_PER_ID.value,
    query_per_id=_QUERY_PER_ID.value,
    gallery_per_id=_GALLERY_PER_ID.value,
    num_cameras=_CAMERAS.value,
    min_cameras_per_id=_MIN_CAMERAS.value,
    num_distractors=_DISTRACTORS.value,
    num_junk=_JUNK.value,
    image_size=(_HEIGHT.value, _WIDTH.value),
    seed=_SEED.value,
    difficulty=dataclasses.replace(
      _D,
      palette_size=_PALETTE.value,
      group_size=_GROUP.value,
      colour_cast=_CAST.value,
      illumination=_ILLUM.value,
      blur=_BLUR.value,
      clutter=_CLUTTER.value,
      occlusion_prob=_OCCLUSION.value,
      pose_jitter=_POSE.value,
    ),
  )


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = config_from_flags()
  errors.check_output_dir(_OUT.value, "--out")
  start = time.perf_counter()
  plan = generate(_OUT.value, config, overwrite=_OVERWRITE.value)
  elapsed = time.perf_counter() - start
  print(
    f"Wrote {len(plan.images)} images to {pathlib.Path(_OUT.value) / MARKET_DIR} "
    f"in {elapsed:.1f} s (seed {config.seed})."
  )
  print(format_statistics(plan))


if __name__ == "__main__":
  logs.show_only_ours()  # third-party log lines only with --verbosity=1
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _OUT = paths.DEFINE_path("out", None, "Output directory (gets Market-1501-v15.09.15/).")
  _SEED = flags.DEFINE_integer("seed", _C.seed, "Random seed.")
  _IDS = flags.DEFINE_integer("ids", _C.num_ids, "Identities in total (train + test).")
  _TRAIN_IDS = flags.DEFINE_integer("train_ids", _C.num_train_ids, "Training ids; -1 = ids // 2.")
  _TRAIN_PER_ID = flags.DEFINE_integer(
    "images_per_id", _C.train_images_per_id, "Train images per id."
  )
  _QUERY_PER_ID = flags.DEFINE_integer("query_per_id", _C.query_per_id, "Queries per test id.")
  _GALLERY_PER_ID = flags.DEFINE_integer(
    "gallery_per_id", _C.gallery_per_id, "Gallery images per test id."
  )
  _CAMERAS = flags.DEFINE_integer("cameras", _C.num_cameras, "Cameras (2..6).")
  _MIN_CAMERAS = flags.DEFINE_integer(
    "min_cameras", _C.min_cameras_per_id, "Cameras per id, at least."
  )
  _DISTRACTORS = flags.DEFINE_integer("distractors", _C.num_distractors, "pid-0000 gallery images.")
  _JUNK = flags.DEFINE_integer("junk", _C.num_junk, "pid -1 gallery images.")
  _HEIGHT = flags.DEFINE_integer("height", _C.image_size[0], "Image height.")
  _WIDTH = flags.DEFINE_integer("width", _C.image_size[1], "Image width.")
  _OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace an existing dataset in --out.")
  _PALETTE = flags.DEFINE_integer("palette_size", _D.palette_size, "Clothing colours used.")
  _GROUP = flags.DEFINE_integer("group_size", _D.group_size, "Ids sharing one colour multiset.")
  _CAST = flags.DEFINE_float("colour_cast", _D.colour_cast, "Per-camera colour-cast strength.")
  _ILLUM = flags.DEFINE_float("illumination", _D.illumination, "Per-camera brightness spread.")
  _BLUR = flags.DEFINE_float("blur", _D.blur, "Max per-camera blur radius (px).")
  _CLUTTER = flags.DEFINE_integer("clutter", _D.clutter, "Max background objects per image.")
  _OCCLUSION = flags.DEFINE_float("occlusion", _D.occlusion_prob, "Occlusion probability.")
  _POSE = flags.DEFINE_float("pose_jitter", _D.pose_jitter, "Box misalignment / stride scale.")
  flags.mark_flag_as_required("out")
  errors.run(main)
