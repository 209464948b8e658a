"""Tests of the ranked-list figure: the lists shown, the frame colours, the PNG."""

import numpy as np
import pytest
from PIL import Image

from fsaf_jax.evaluation import figure
from fsaf_jax.evaluation.inputs import EvaluationInputError


def _problem(seed=0, m=12, n=80):
  rng = np.random.default_rng(seed)
  q_pids, g_pids = rng.integers(1, 8, m), rng.integers(0, 8, n)
  g_pids[:3] = -1  # junk
  q_cams, g_cams = rng.integers(0, 3, m), rng.integers(0, 3, n)
  dist = (rng.integers(0, 6, (m, n)) / 5).astype(np.float32)  # many ties
  palette = (rng.random((9, 3)) * 255).astype(np.uint8)
  images = lambda pids: np.stack([np.full((32, 16, 3), palette[p], np.uint8) for p in pids])
  return dist, q_pids, g_pids, q_cams, g_cams, images(q_pids), images(g_pids)


def test_ranked_lists_follow_protocol():
  dist, q_pids, g_pids, q_cams, g_cams, _, _ = _problem()
  lists = figure.ranked_lists(dist, q_pids, g_pids, q_cams, g_cams, range(12), top_k=10)
  for q, ranked in enumerate(lists):
    keep = [
      g
      for g in range(80)
      if g_pids[g] >= 0 and not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])
    ]
    want = sorted(keep, key=lambda g: (dist[q, g], g))[:10]  # distance, then index
    np.testing.assert_array_equal(ranked, want)


def test_figure_frames_and_png(tmp_path):
  dist, q_pids, g_pids, q_cams, g_cams, q_img, g_img = _problem()
  path = tmp_path / "out" / "ranked.png"
  fig = figure.ranked_list_figure(
    dist,
    q_pids,
    g_pids,
    q_cams,
    g_cams,
    query_images=q_img,
    gallery_images=lambda i: g_img[i],  # array and callable sources
    query_indices=[0, 5, 7],
    top_k=6,
    title="t",
    path=path,
  )
  assert len(fig.axes) == 3 * 7
  lists = figure.ranked_lists(dist, q_pids, g_pids, q_cams, g_cams, [0, 5, 7], top_k=6)
  for row, q in enumerate([0, 5, 7]):
    axes = fig.axes[row * 7 : (row + 1) * 7]
    assert f"c{q_cams[q] + 1} id {q_pids[q]}" in axes[0].get_xlabel()
    for ax, g in zip(axes[1:], lists[row], strict=True):
      want = figure.RIGHT_COLOR if g_pids[g] == q_pids[q] else figure.WRONG_COLOR
      assert np.allclose(ax.spines["top"].get_edgecolor()[:3], _rgb(want))
      assert f": c{g_cams[g] + 1}\n" in ax.get_xlabel() and f"id {g_pids[g]}" in ax.get_xlabel()
  image = Image.open(path)
  assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 150


def test_default_queries_have_positives():
  dist, q_pids, g_pids, q_cams, g_cams, q_img, g_img = _problem(1)
  fig = figure.ranked_list_figure(
    dist, q_pids, g_pids, q_cams, g_cams, query_images=q_img, gallery_images=g_img, num_queries=4
  )
  assert len(fig.axes) == 4 * 11


def test_bad_images():
  dist, q_pids, g_pids, q_cams, g_cams, q_img, g_img = _problem()
  with pytest.raises(EvaluationInputError, match=r"gallery image \d+ must be uint8 \[H, W, 3\]"):
    figure.ranked_list_figure(
      dist,
      q_pids,
      g_pids,
      q_cams,
      g_cams,
      query_images=q_img,
      gallery_images=g_img.astype(np.float32),
      query_indices=[0],
    )
  with pytest.raises(EvaluationInputError, match=r"Query indices \[99\]"):
    figure.ranked_list_figure(
      dist,
      q_pids,
      g_pids,
      q_cams,
      g_cams,
      query_images=q_img,
      gallery_images=g_img,
      query_indices=[99],
    )


def _rgb(hex_color):
  return tuple(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))


@pytest.mark.parametrize("rows", [1, 8])
def test_no_blank_band_under_the_title(rows):
  dist, q_pids, g_pids, q_cams, g_cams, q_img, g_img = _problem()
  fig = figure.ranked_list_figure(
    dist, q_pids, g_pids, q_cams, g_cams, query_images=q_img, gallery_images=g_img,
    query_indices=range(rows), title="a title",
  )  # fmt: skip
  renderer = fig.canvas.get_renderer()
  title_bottom = fig._suptitle.get_window_extent(renderer).y0
  images_top = max(ax.get_window_extent(renderer).y1 for ax in fig.axes)
  gap_inches = (title_bottom - images_top) / fig.dpi
  assert 0.0 <= gap_inches < 0.15  # the title sits right above the first row
