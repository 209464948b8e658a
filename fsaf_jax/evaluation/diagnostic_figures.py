"""The diagnostic pictures beside the ranked-list figure (fast-reid's visualizer, torchreid's
activation maps), drawn with matplotlib's object API on an Agg canvas, written as PNG.

  write_distance_figure(path, pairs, title)      # positive / negative pair histograms
  write_roc_figure(path, pairs, tprs, title)     # ROC, log FPR axis, TPR@FPR marked
  write_activation_figure(path, images, maps, labels, title)

`pairs` are `roc.PairDistances`, `tprs` `roc.tpr_at_fpr`'s dict, `maps` the
`activation_maps` of `images`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fsaf_jax.core import whole_file
from fsaf_jax.evaluation import activation_maps, roc

POSITIVE_COLOR = "#1a9e1a"
NEGATIVE_COLOR = "#d62728"
BINS = 80  # fast-reid's


def _save(fig: Figure, path: str | os.PathLike) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  whole_file.write_whole(path, buf.getvalue())


def write_distance_figure(path: str | os.PathLike, pairs: roc.PairDistances, title: str) -> None:
  """Density histograms of the positive and negative pair distances."""
  fig = Figure(figsize=(6.4, 3.6))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  low = float(min(pairs.positive[0], pairs.negative[0]))
  high = float(max(pairs.positive[-1], pairs.negative[-1]))
  bins = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
  for values, color, name in (
    (pairs.positive, POSITIVE_COLOR, "positive (same identity)"),
    (pairs.negative, NEGATIVE_COLOR, "negative (other identity)"),
  ):
    ax.hist(values, bins=bins, density=True, alpha=0.55, color=color,
            label=f"{name}: {values.size:,} pairs")  # fmt: skip
  ax.set_xlabel("distance")
  ax.set_ylabel("density")
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  _save(fig, path)


def write_roc_figure(
  path: str | os.PathLike, pairs: roc.PairDistances, tprs: Mapping[str, float], title: str
) -> None:
  """The ROC (`roc.roc_curve`, fast-reid's convention) on a log FPR axis, the
  TPR@FPR points marked."""
  fpr, tpr = roc.roc_curve(pairs)
  fig = Figure(figsize=(5.2, 4.0))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  floor = min(roc.FPR_TARGETS[0] / 2, 1.0 / pairs.positive.size)
  ax.plot(np.maximum(fpr, floor), tpr, color="#1f3b99", drawstyle="steps-post")
  for target in roc.FPR_TARGETS:
    value = tprs[roc.tpr_key(target)]
    ax.plot([target], [value], "o", color=NEGATIVE_COLOR)
    ax.annotate(f"{value:.3f}", (target, value), textcoords="offset points", xytext=(5, 5),
                fontsize=7)  # fmt: skip
  ax.set_xscale("log")
  ax.set_xlim(floor, 1.0)
  ax.set_ylim(0.0, 1.01)
  ax.set_xlabel("FPR: positive pairs above the threshold")
  ax.set_ylabel("TPR: negative pairs above the threshold")
  ax.grid(True, which="both", alpha=0.3)
  ax.set_title(title, fontsize=10)
  _save(fig, path)


def write_activation_figure(
  path: str | os.PathLike,
  images: np.ndarray,
  maps: np.ndarray,
  labels: Sequence[str],
  title: str,
  cell_inches: tuple[float, float] = (0.9, 1.9),
) -> None:
  """Each image beside its activation map overlaid on it, one column pair per image.

  Args:
    images: uint8 [B, H, W, 3], the network's inputs.
    maps: float32 [B, H, W] in [0, 1].
    labels: B captions.
  """
  count = len(images)
  width, height = cell_inches
  fig = Figure(figsize=(width * count, 2 * height + 0.3), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(2, count, squeeze=False)
  shown = activation_maps.overlay(images, maps)
  for i in range(count):
    for row, picture in ((0, images[i]), (1, shown[i])):
      ax = axes[row, i]
      ax.imshow(picture, aspect="auto", interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
    axes[1, i].set_xlabel(labels[i], fontsize=6.5)
  fig.suptitle(title, fontsize=10)
  _save(fig, path)
