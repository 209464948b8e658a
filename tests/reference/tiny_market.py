"""A tiny Market-1501 tree whose identities look alike, built with the real builder.

Images of one identity share a colour layout (top / bottom halves) and differ by
noise and a per-camera brightness, so a randomly initialised model already ranks
some right matches first and the metrics are neither 0 nor 1. The gallery holds
same-camera copies of queries (removed by the protocol), distractors (pid 0), junk
(pid -1, dropped by the builder), and one query (pid 7) whose only gallery image
shares its camera (skipped by the protocol).
"""

from __future__ import annotations

import io
import pathlib

import numpy as np
from PIL import Image

from data_pipelines.datasets import source

TOP = "Market-1501-v15.09.15"
DATASET = "market1501"
NUM_TRAIN_IDS = 3
IMAGE_HW = (32, 16)

TRAIN = [
  "bounding_box_train/0011_c1s1_000001_01.jpg",
  "bounding_box_train/0011_c2s1_000002_01.jpg",
  "bounding_box_train/0012_c3s1_000003_01.jpg",
  "bounding_box_train/0012_c4s1_000004_01.jpg",
  "bounding_box_train/0013_c5s1_000005_01.jpg",
  "bounding_box_train/0013_c6s1_000006_01.jpg",
]
QUERY = [
  "query/0001_c1s1_000100_00.jpg",
  "query/0002_c2s1_000200_00.jpg",
  "query/0003_c3s1_000300_00.jpg",
  "query/0004_c1s1_000400_00.jpg",
  "query/0005_c4s1_000500_00.jpg",
  "query/0006_c5s1_000600_00.jpg",
  "query/0007_c6s1_000700_00.jpg",  # only same-camera gallery image: skipped
]
GALLERY = [
  "bounding_box_test/0001_c1s1_001100_01.jpg",  # same pid & camera as its query
  "bounding_box_test/0001_c2s1_001200_01.jpg",
  "bounding_box_test/0001_c3s1_001300_01.jpg",
  "bounding_box_test/0002_c2s1_002200_01.jpg",
  "bounding_box_test/0002_c4s1_002400_01.jpg",
  "bounding_box_test/0003_c1s1_003100_01.jpg",
  "bounding_box_test/0003_c5s1_003500_01.jpg",
  "bounding_box_test/0003_c6s1_003600_01.jpg",
  "bounding_box_test/0004_c2s1_004200_01.jpg",
  "bounding_box_test/0004_c3s1_004300_01.jpg",
  "bounding_box_test/0005_c1s1_005100_01.jpg",
  "bounding_box_test/0005_c6s1_005600_01.jpg",
  "bounding_box_test/0006_c2s1_006200_01.jpg",
  "bounding_box_test/0006_c3s1_006300_01.jpg",
  "bounding_box_test/0006_c4s1_006400_01.jpg",
  "bounding_box_test/0007_c6s1_007600_01.jpg",
  "bounding_box_test/0000_c1s1_000010_01.jpg",  # distractors: kept
  "bounding_box_test/0000_c3s1_000030_01.jpg",
  "bounding_box_test/0000_c5s1_000050_01.jpg",
  "bounding_box_test/-1_c2s1_000020_01.jpg",  # junk: dropped by the builder
]
NUM_QUERY = len(QUERY)
NUM_GALLERY = len(GALLERY) - 1  # the junk image is dropped


def person_image(pid: int, camera: int, seed: int, hw: tuple[int, int] = IMAGE_HW) -> bytes:
  """JPEG of a 'person' of identity `pid` seen by `camera` (1-based), with noise."""
  rng = np.random.default_rng(seed)
  colours = np.random.default_rng(1000 + pid).integers(0, 256, (2, 3))
  h, w = hw
  pixels = np.empty((h, w, 3), np.float64)
  pixels[: h // 2] = colours[0]
  pixels[h // 2 :] = colours[1]
  pixels *= 0.7 + 0.1 * camera
  pixels += rng.normal(0.0, 40.0, pixels.shape)
  buf = io.BytesIO()
  Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG")
  return buf.getvalue()


def write_market(root: pathlib.Path) -> pathlib.Path:
  """Writes the tree under `root/Market-1501-v15.09.15`; returns that folder."""
  top = root / TOP
  for i, relpath in enumerate(TRAIN + QUERY + GALLERY):
    name = relpath.rsplit("/", 1)[1]
    pid = int(name.split("_")[0])
    camera = int(name.split("_")[1][1])
    path = top / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(person_image(pid, camera, seed=i))
  return top


def build(tmp: pathlib.Path) -> pathlib.Path:
  """Writes and builds the dataset under `tmp`; returns the TFDS data_dir."""
  write_market(tmp / "manual")
  source.build(DATASET, tmp / "data", tmp / "manual")
  return tmp / "data"
