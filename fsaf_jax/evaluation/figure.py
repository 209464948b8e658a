"""Ranked-list figure, like Fig. 2 of the FSAF paper.

Each row shows a query, then its top-k gallery images (after the same filtering as
the metrics: same-pid-same-camera and junk items removed; ties broken by gallery
index), framed green when they are the query's identity and red otherwise; under each
image its camera, counted from 1 as in the file names (`c1`..`c6` of Market-1501; the
records store it 0-based), and its pid. Drawn with matplotlib's object API on an Agg canvas (no
pyplot, no global backend change), written as PNG.

  fig = ranked_list_figure(distmat, q_pids, g_pids, q_camids, g_camids,
                           query_images=load_query, gallery_images=load_gallery,
                           path=workdir / "eval" / "ranked_lists.png")

Images are uint8 RGB arrays [H, W, 3] (sizes may differ), given as one array
[M, H, W, 3] / [N, H, W, 3] or as a callable `index -> image` (e.g. reading and
decoding record `index` of the query / gallery source), so only the shown images are
loaded.

`write_ranked_list_figure` draws the evaluation's figure (`evaluator.Evaluator`):
`figure_queries` picks queries with a positive, evenly spread over the query set, and
only their distance rows are computed and only the images shown are decoded.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
from absl import logging
from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fsaf_jax.core import whole_file
from fsaf_jax.evaluation import distance as distance_lib
from fsaf_jax.evaluation import inputs, metrics
from fsaf_jax.evaluation.scoring import EvalFeatures

ImageSource = np.ndarray | Callable[[int], np.ndarray]
RIGHT_COLOR = "#1a9e1a"
WRONG_COLOR = "#d62728"
QUERY_COLOR = "#1f3b99"
EVAL_TOP_K = 10  # gallery images per row of the evaluation's figure
TITLE_INCHES = 0.3  # the title's band above the grid


def camera_label(camid: int) -> str:
  """'c<camid + 1>': a 0-based camera id as the file names count it (c1, c2, ...)."""
  return f"c{int(camid) + 1}"


def _image(source: ImageSource, index: int, what: str) -> np.ndarray:
  image = source(index) if callable(source) else source[index]
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise inputs.EvaluationInputError(
      f"{what} image {index} must be uint8 [H, W, 3], got {image.dtype} {image.shape}."
    )
  return image


def ranked_lists(
  distmat, q_pids, g_pids, q_camids, g_camids, query_indices: Sequence[int], top_k: int
) -> list[np.ndarray]:
  """Top-k filtered gallery indices of each query (stable order), as the metrics see them."""
  q_pids, g_pids, q_camids, g_camids = inputs.query_gallery_ids(q_pids, g_pids, q_camids, g_camids)
  inputs.distance_matrix_shape("distmat", distmat, q_pids.shape[0], g_pids.shape[0])
  out = []
  for q in query_indices:
    row = np.asarray(distmat[q], np.float32)
    keep = ~((g_pids == q_pids[q]) & (g_camids == q_camids[q])) & (g_pids >= 0)
    kept = np.nonzero(keep)[0]
    out.append(kept[np.argsort(row[kept], kind="stable")[:top_k]])
  return out


def ranked_list_figure(
  distmat,
  q_pids,
  g_pids,
  q_camids,
  g_camids,
  *,
  query_images: ImageSource,
  gallery_images: ImageSource,
  query_indices: Sequence[int] | None = None,
  num_queries: int = 8,
  top_k: int = 10,
  seed: int = 0,
  title: str | None = None,
  path: str | os.PathLike | None = None,
  cell_inches: tuple[float, float] = (0.9, 1.9),
) -> Figure:
  """Draws (and optionally writes as PNG) the ranked lists of some queries.

  Args:
    distmat: [M, N] distances (NumPy or jax.Array).
    q_pids, g_pids, q_camids, g_camids: as `metrics.evaluate`.
    query_images, gallery_images: uint8 images as arrays or index -> image callables.
    query_indices: queries to show; None = `num_queries` drawn (seeded) among the
      queries that have a positive, in increasing order.
    num_queries: rows when `query_indices` is None.
    top_k: gallery images per row (the paper: 10).
    seed: seed of the query draw.
    title: figure title.
    path: where to write the PNG (local or e.g. gs://); None = don't write.
    cell_inches: (width, height) of one image cell.

  Returns:
    The matplotlib Figure.
  """
  q_pids, g_pids, q_camids, g_camids = inputs.query_gallery_ids(q_pids, g_pids, q_camids, g_camids)
  query_indices = _chosen_queries(
    query_indices, q_pids, g_pids, q_camids, g_camids, num_queries=num_queries, seed=seed
  )
  lists = ranked_lists(distmat, q_pids, g_pids, q_camids, g_camids, query_indices, top_k)
  fig, grid = _figure_grid(len(query_indices), top_k, cell_inches, title)
  for r, (q, ranked) in enumerate(zip(query_indices, lists, strict=True)):
    cells = [
      (
        0,
        _image(query_images, q, "query"),
        QUERY_COLOR,
        f"query\n{camera_label(q_camids[q])} id {q_pids[q]}",
      )
    ]
    for j, g in enumerate(ranked):
      color = RIGHT_COLOR if g_pids[g] == q_pids[q] else WRONG_COLOR
      label = f"{j + 1}: {camera_label(g_camids[g])}\nid {g_pids[g]}"
      cells.append((j + 2, _image(gallery_images, int(g), "gallery"), color, label))
    for col, image, color, label in cells:
      _draw_cell(fig.add_subplot(grid[r, col]), image, color, label, framed_label=col > 0)
  if title:
    fig_height = fig.get_size_inches()[1]
    fig.suptitle(title, fontsize=10, y=1.0 - 0.05 / fig_height, va="top")
  if path is not None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    whole_file.write_whole(path, buf.getvalue())
  return fig


def _chosen_queries(query_indices, q_pids, g_pids, q_camids, g_camids, *, num_queries, seed):
  """The query rows to draw: the given indices (checked), or `num_queries` drawn (seeded)
  among the queries with a positive, sorted. Returns a list of ints."""
  if query_indices is None:
    counts, _ = metrics.positive_lists(q_pids, q_camids, g_pids, g_camids)
    candidates = np.nonzero(counts > 0)[0]
    if candidates.size == 0:
      candidates = np.arange(q_pids.shape[0])
    rng = np.random.default_rng(seed)
    count = min(num_queries, candidates.size)
    query_indices = np.sort(rng.choice(candidates, size=count, replace=False))
  query_indices = [int(q) for q in query_indices]
  if not query_indices:
    raise inputs.EvaluationInputError("No query to draw.")
  bad = [q for q in query_indices if not 0 <= q < q_pids.shape[0]]
  if bad:
    raise inputs.EvaluationInputError(f"Query indices {bad} outside 0..{q_pids.shape[0] - 1}.")
  return query_indices


def _figure_grid(rows: int, top_k: int, cell_inches: tuple[float, float], title: str | None):
  """An empty figure and its grid: `rows` rows of query, gap, then `top_k` gallery cells.

  The grid starts right under the title (matplotlib's default top leaves a band).
  Returns (Figure, GridSpec).
  """
  cols = top_k + 1
  width, height = cell_inches
  title_inches = TITLE_INCHES if title else 0.0
  fig_height = height * rows + title_inches
  fig = Figure(figsize=(width * (cols + 0.3), fig_height))
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(
    rows,
    cols + 1,
    width_ratios=[1, 0.3] + [1] * top_k,
    wspace=0.08,
    hspace=0.35,
    top=1.0 - title_inches / fig_height,
    bottom=0.25 / fig_height,
  )
  return fig, grid


def _draw_cell(ax, image: np.ndarray, color: str, label: str, *, framed_label: bool) -> None:
  """One image cell: the image, a frame of `color`, and `label` under it (in `color` for
  gallery cells, black for the query)."""
  ax.imshow(image, aspect="auto", interpolation="nearest")
  ax.set_xticks([])
  ax.set_yticks([])
  for spine in ax.spines.values():
    spine.set_edgecolor(color)
    spine.set_linewidth(3.0 if framed_label else 2.0)
  ax.set_xlabel(label, fontsize=6.5, color=color if framed_label else "black", labelpad=2)


def figure_queries(features: EvalFeatures, num: int) -> np.ndarray:
  """Indices of `num` queries with a positive in the gallery, evenly spread, sorted."""
  counts, _ = metrics.positive_lists(
    features.query_pids, features.query_camids, features.gallery_pids, features.gallery_camids
  )
  valid = np.nonzero(counts > 0)[0]
  if num <= 0 or valid.size == 0:
    return np.zeros(0, np.int64)
  if num >= valid.size:
    return valid
  return valid[np.linspace(0, valid.size - 1, num).round().astype(np.int64)]


def decoded(source: Any, index: int) -> np.ndarray:
  """Record `index` of `source` (a field `image` of encoded bytes) as uint8 RGB [H, W, 3]
  at its own size."""
  with PIL.Image.open(io.BytesIO(source[int(index)]["image"])) as image:
    return np.asarray(image.convert("RGB"))


def write_ranked_list_figure(
  path: epath.PathLike,
  features: EvalFeatures,
  query_source: Any,
  gallery_source: Any,
  *,
  metric: str,
  num_queries: int,
  reranked: np.ndarray | None = None,
  title: str = "",
) -> int:
  """Renders the evaluation's ranked-list figure (`ranked_list_figure`, top 10) to `path`.

  Args:
    path: output PNG.
    features: the evaluated features (source order).
    query_source, gallery_source: the sources, to read the images by index.
    metric: distance of the ranking ('cosine' | 'euclidean'), unless `reranked`.
    num_queries: rows of the figure (queries with a positive, evenly spread).
    reranked: re-ranked [M, N] distances to rank by instead, or None.
    title: figure title.

  Returns:
    The number of query rows drawn (0: no query has a positive, nothing written).
  """
  queries = figure_queries(features, num_queries)
  if queries.size == 0:
    logging.warning("No query has a positive in the gallery: no ranked-list figure.")
    return 0
  if reranked is not None:
    distances = np.asarray(reranked)[queries]
  else:
    distances = np.asarray(
      distance_lib.pairwise_distance(
        features.query_feats[queries], features.gallery_feats, metric=metric
      )
    )
  ranked_list_figure(
    distances,
    features.query_pids[queries],
    features.gallery_pids,
    features.query_camids[queries],
    features.gallery_camids,
    query_images=lambda i: decoded(query_source, queries[i]),
    gallery_images=lambda j: decoded(gallery_source, j),
    query_indices=range(queries.size),
    top_k=EVAL_TOP_K,
    title=title or None,
    path=path,
  )
  return int(queries.size)
