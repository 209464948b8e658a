"""The build CLI: per-split table, published figures beside, differences as warnings."""

import os
import sys

from data_pipelines.datasets import build
from tests.reference import ceiling, reid_layouts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _stats(ids, images, skipped=()):
  return {
    "num_ids": ids,
    "num_images": images,
    "num_junk_dropped": 0,
    "num_distractors_dropped": 0,
    "skipped_corrupt": list(skipped),
  }


def test_report_matching_published_has_no_warning():
  stats = {
    "train": _stats(751, 12936),
    "query": _stats(750, 3368),
    "gallery": _stats(751, 15913),
  }
  published = {"train": (751, 12936), "query": (750, 3368), "gallery": (751, 15913)}
  table, warnings = build.format_report("market1501", stats, published)
  assert warnings == []
  assert "train" in table and "12936" in table


def test_report_warns_on_differences_and_skipped():
  stats = {
    "train": _stats(751, 12935, skipped=["0002_c1s1_000451_03.jpg"]),
    "query": _stats(750, 3368),
    "gallery": _stats(751, 15913),
  }
  published = {"train": (751, 12936), "query": (None, 3368), "gallery": (751, 15913)}
  _, warnings = build.format_report("market1501", stats, published)
  assert warnings == [
    "WARNING: market1501 train: built 751 ids / 12935 images, published 751 ids / 12936 images.",
    "WARNING: market1501 train: skipped 1 corrupt images: ['0002_c1s1_000451_03.jpg']",
  ]


def test_report_without_published_figures():
  stats = {s: _stats(1, 1) for s in ("train", "query", "gallery")}
  table, warnings = build.format_report("x", stats, None)
  assert warnings == [] and "pub." not in table


def test_cli_builds_and_prints_counts(tmp_path):
  reid_layouts.write_images(
    tmp_path / "manual" / "Market-1501-v15.09.15",
    [
      "bounding_box_train/0002_c1s1_000451_03.jpg",
      "query/0003_c1s1_000200_00.jpg",
      "bounding_box_test/0003_c2s1_000300_01.jpg",
      "bounding_box_test/-1_c2s1_000301_01.jpg",
    ],
  )
  out = ceiling.run(
    [
      sys.executable,
      "-m",
      "data_pipelines.datasets.build",
      "--dataset=market1501",
      f"--manual_dir={tmp_path / 'manual'}",
      f"--data_dir={tmp_path / 'data'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
  # split, ids, images, junk, distractors, corrupt, published ids, published images
  assert rows["train"][:8] == ["train", "1", "1", "0", "0", "0", "751", "12936"]
  assert rows["gallery"][:8] == ["gallery", "1", "1", "1", "0", "0", "751", "15913"]
  assert "WARNING: market1501 query: built 1 ids / 1 images, published 750 ids" in out
