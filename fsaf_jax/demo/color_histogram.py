r"""No-learning baseline: global colour histograms, scored with the Market protocol.

  python -m fsaf_jax.demo.color_histogram --data=DIR [--space=hsv --metric=...]

`DIR` is a folder holding `Market-1501-v15.09.15/` (as written by
`python -m data_pipelines.synthetic`) or that folder itself. Every query and gallery
image becomes one L1-normalised joint colour histogram; queries rank the gallery by a
histogram distance; `fsaf_jax.evaluation.metrics.evaluate` scores the ranking (same-pid
same-camera gallery items dropped, junk pid -1 dropped at load, distractors pid 0 kept).
On the synthetic data this is the figure a learned embedding has to beat: identities
there share colours by construction, so colour alone should do poorly.
"""

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from PIL import Image

from data_pipelines import errors
from data_pipelines.datasets import image_check, naming
from data_pipelines.paths import DEFINE_path
from fsaf_jax.evaluation import metrics

MARKET_DIR = "Market-1501-v15.09.15"
QUERY_DIR, GALLERY_DIR = "query", "bounding_box_test"
SPACES = ("hsv", "rgb")
METRICS = ("hellinger", "l1", "chi2")
DEFAULT_BINS = {"hsv": (16, 4, 4), "rgb": (8, 8, 8)}
# Pixel weighting centred on the person (the best of 0, 0.05, 0.07, 0.1, ..., 0.3 on the
# synthetic data): a narrow central strip, so the baseline sees clothing, not background.
DEFAULT_CENTER_SIGMA = 0.05


@dataclasses.dataclass(frozen=True)
class Split:
  """Histograms of one split. `features` float32 [N, D]; `pids`, `camids` int [N]."""

  features: np.ndarray
  pids: np.ndarray
  camids: np.ndarray
  file_names: list[str]


def market_root(data_dir: str | pathlib.Path) -> pathlib.Path:
  """`data_dir` or `data_dir/Market-1501-v15.09.15`, whichever holds query/ and the gallery.

  Raises:
    InputNotFoundError (a FileNotFoundError): neither holds `query/` and
      `bounding_box_test/`.
  """
  data_dir = pathlib.Path(data_dir).expanduser()
  for root in (data_dir / MARKET_DIR, data_dir):
    if (root / QUERY_DIR).is_dir() and (root / GALLERY_DIR).is_dir():
      return root
  raise errors.InputNotFoundError(
    f"No Market-1501 folder at {data_dir}: expected {data_dir / MARKET_DIR}/ or {data_dir}/ "
    f"to contain {QUERY_DIR}/ and {GALLERY_DIR}/ (write one with `python -m "
    "data_pipelines.synthetic --out=DIR`)."
  )


def center_weights(height: int, width: int, center_sigma: float) -> np.ndarray:
  """Gaussian pixel weights centred on the box, float64 [H, W]; all ones if sigma is 0.

  `w(y, x) = exp(-((x - cx) / (s W))^2 / 2 - ((y - cy) / (2 s H))^2 / 2)` with
  `s = center_sigma`: people stand in the middle of a detection box, upright.
  """
  if center_sigma < 0:
    raise ValueError(f"center_sigma={center_sigma}; expected >= 0 (0 = uniform weights).")
  if center_sigma == 0:
    return np.ones((height, width))
  y = (np.arange(height) - (height - 1) / 2) / (2 * center_sigma * height)
  x = (np.arange(width) - (width - 1) / 2) / (center_sigma * width)
  return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2))


def color_histogram(
  image: np.ndarray,
  bins: Sequence[int] = DEFAULT_BINS["hsv"],
  space: str = "hsv",
  center_sigma: float = 0.0,
) -> np.ndarray:
  """Joint colour histogram of one image, optionally centre-weighted.

  Args:
    image: uint8 [H, W, 3] RGB.
    bins: bins per channel (3 ints); channel values 0..255 are split uniformly.
    space: 'hsv' (PIL's HSV, hue first) or 'rgb'.
    center_sigma: 0 counts every pixel once; > 0 weights pixels by
      `center_weights` (down-weights the background at the box edges).

  Returns:
    float32 [bins[0] * bins[1] * bins[2]], L1-normalised (sums to 1).
  """
  if space not in SPACES:
    raise ValueError(f"color_histogram: space={space!r}; expected one of {SPACES}.")
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(
      f"color_histogram: expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}."
    )
  if len(bins) != 3 or min(bins) < 1 or max(bins) > 256:
    raise ValueError(f"color_histogram: bins={tuple(bins)}; expected 3 ints in 1..256.")
  if space == "hsv":
    image = np.asarray(Image.fromarray(image).convert("HSV"))
  b = np.asarray(bins, np.int64)
  idx = (image.reshape(-1, 3).astype(np.int64) * b) >> 8  # value * bins // 256
  flat = (idx[:, 0] * b[1] + idx[:, 1]) * b[2] + idx[:, 2]
  weights = center_weights(image.shape[0], image.shape[1], center_sigma).reshape(-1)
  hist = np.bincount(flat, weights=weights, minlength=int(np.prod(b)))
  return (hist / hist.sum()).astype(np.float32)


def load_split(
  root: pathlib.Path,
  split: str,
  bins: Sequence[int],
  space: str,
  center_sigma: float = 0.0,
  drop_junk: bool = True,
) -> Split:
  """Histograms of every image in `root/split`, with pid / camera parsed from names.

  Images are the files `naming.is_image_name` accepts (the builders' rule: `.JPG` too).
  Junk images (pid -1) are dropped when `drop_junk`; distractors (pid 0) are kept.

  Raises:
    UserError: a file name is not a Market-1501 name, an image does not decode
      (`CorruptImageError`), or the split is empty.
  """
  paths = sorted(p for p in (root / split).iterdir() if naming.is_image_name(p.name))
  feats, pids, camids, names = [], [], [], []
  for path in paths:
    try:
      pid, camid = naming.parse_market_name(path.name)
    except ValueError as e:
      raise errors.UserError(f"{path}: {e}") from e
    if drop_junk and pid == -1:
      continue
    try:
      with image_check.strict_pil(), Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:
      raise image_check.CorruptImageError(f"cannot decode image {path}: {e}") from e
    feats.append(color_histogram(pixels, bins, space, center_sigma))
    pids.append(pid)
    camids.append(camid)
    names.append(path.name)
  if not feats:
    raise errors.UserError(f"No usable Market-1501 images (*.jpg, pid != -1) in {root / split}.")
  return Split(np.stack(feats), np.asarray(pids), np.asarray(camids), names)


def histogram_distance(q: np.ndarray, g: np.ndarray, metric: str = "hellinger") -> np.ndarray:
  """Pairwise distances between L1-normalised histograms.

  Args:
    q: float [M, D] histograms.
    g: float [N, D] histograms.
    metric: 'hellinger' (sqrt(1 - sum sqrt(p q))), 'l1' (sum |p - q|) or
      'chi2' (sum (p - q)^2 / (p + q), 0/0 = 0).

  Returns:
    float64 [M, N].
  """
  q = np.asarray(q, np.float64)
  g = np.asarray(g, np.float64)
  if metric == "hellinger":
    bc = np.sqrt(q) @ np.sqrt(g).T
    return np.sqrt(np.maximum(1.0 - bc, 0.0))
  if metric not in METRICS:
    raise ValueError(f"histogram_distance: metric={metric!r}; expected one of {METRICS}.")
  out = np.empty((q.shape[0], g.shape[0]))
  chunk = max(1, 2**22 // max(1, g.size))  # bounds the [chunk, N, D] temporary
  for i in range(0, q.shape[0], chunk):
    diff = q[i : i + chunk, None, :] - g[None, :, :]
    if metric == "l1":
      out[i : i + chunk] = np.abs(diff).sum(-1)
    else:
      s = q[i : i + chunk, None, :] + g[None, :, :]
      out[i : i + chunk] = np.divide(diff**2, s, out=np.zeros_like(s), where=s > 0).sum(-1)
  return out


def run_baseline(
  data_dir: str | pathlib.Path,
  *,
  space: str = "hsv",
  bins: Sequence[int] | None = None,
  metric: str = "hellinger",
  center_sigma: float = DEFAULT_CENTER_SIGMA,
  max_rank: int = 50,
) -> metrics.RankMetrics:
  """Scores the colour-histogram baseline on a Market-layout query / gallery.

  Args:
    data_dir: folder with `Market-1501-v15.09.15/` (or that folder itself).
    space: 'hsv' or 'rgb'.
    bins: bins per channel; None = `DEFAULT_BINS[space]`.
    metric: histogram distance (see `histogram_distance`).
    center_sigma: centre weighting of the pixels (see `center_weights`; 0 = uniform).
    max_rank: CMC length (clipped to the gallery size).

  Returns:
    The `RankMetrics` of `fsaf_jax.evaluation.metrics.evaluate`.
  """
  root = market_root(data_dir)
  bins = DEFAULT_BINS[space] if bins is None else tuple(bins)
  query = load_split(root, QUERY_DIR, bins, space, center_sigma)
  gallery = load_split(root, GALLERY_DIR, bins, space, center_sigma)
  if np.any(query.pids <= 0):
    bad = query.file_names[int(np.argmax(query.pids <= 0))]
    raise errors.UserError(f"{root / QUERY_DIR}/{bad}: queries must have a pid > 0.")
  distmat = histogram_distance(query.features, gallery.features, metric)
  return metrics.evaluate(
    distmat,
    query.pids,
    gallery.pids,
    query.camids,
    gallery.camids,
    max_rank=min(max_rank, len(gallery.pids)),
  )


def format_metrics(result: metrics.RankMetrics) -> str:
  """One line: Rank-1/5/10, mAP, mINP in percent."""
  cmc = np.asarray(result.cmc)
  ranks = "  ".join(f"Rank-{k}: {100 * cmc[k - 1]:.1f}" for k in (1, 5, 10) if k <= len(cmc))
  return f"{ranks}  mAP: {100 * result.mAP:.1f}  mINP: {100 * result.mINP:.1f}"


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  bins = None if _BINS.value is None else tuple(int(b) for b in _BINS.value)
  result = run_baseline(
    _DATA.value, space=_SPACE.value, bins=bins, metric=_METRIC.value, center_sigma=_CENTER.value
  )
  bins = bins or DEFAULT_BINS[_SPACE.value]
  print(
    f"Colour-histogram baseline ({_SPACE.value} {'x'.join(map(str, bins))}, {_METRIC.value}, "
    f"center_sigma {_CENTER.value}) "
    f"on {market_root(_DATA.value)}: {result.num_valid} queries scored, "
    f"{result.num_skipped} skipped"
  )
  print(format_metrics(result))


if __name__ == "__main__":
  # CLI flags are defined only when run as a program, so that importing several
  # of the package's command-line modules into one process (tests, notebooks) works.
  _DATA = DEFINE_path("data", None, "Folder with Market-1501-v15.09.15/ (or that folder).")
  _SPACE = flags.DEFINE_enum("space", "hsv", SPACES, "Colour space of the histogram.")
  _BINS = flags.DEFINE_list("bins", None, "Bins per channel, e.g. 16,4,4; default per space.")
  _METRIC = flags.DEFINE_enum("metric", "hellinger", METRICS, "Histogram distance.")
  _CENTER = flags.DEFINE_float(
    "center_sigma",
    DEFAULT_CENTER_SIGMA,
    "Centre weighting of pixels (fraction of width); 0 = uniform.",
  )
  flags.mark_flag_as_required("data")
  errors.run(main)
