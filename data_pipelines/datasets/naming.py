"""File-name schemes of the person-ReID datasets: person id and camera from a name.

Each parser takes a bare file name (no directory) and returns `(pid, camid)` with
`pid` the dataset's original person id (int, may be -1 or 0 where the dataset uses
them: see each parser) and `camid` the camera index, **0-based**. A name that does not
follow the scheme raises `ValueError` naming the file and the expected pattern.

One rule for names, used by the dataset builders and by `fsaf_jax.extract`: the
extension's case does not matter (`0002_c1s1_000451_03.JPG` parses as `....jpg`,
`canonical_name`); image files are `IMAGE_EXTENSIONS` in any case, OS litter
(`Thumbs.db`, `._*` AppleDouble files, dot files) excluded (`is_image_name`).
"""

import os
import re

from data_pipelines.datasets import manual_files

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Market-1501: `0002_c1s1_000451_03.jpg` = pid 0002, camera 1, sequence 1, frame
# 000451, box 03. pid -1 (`-1_c1s1_...`): junk boxes; pid 0000: distractors.
MARKET_PATTERN = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d+)_(\d+)\.jpg$")
MARKET_EXAMPLE = "0002_c1s1_000451_03.jpg (pid_c{cam}s{seq}_{frame}_{box}.jpg)"
MARKET_NUM_CAMERAS = 6

# DukeMTMC-reID: `0001_c2_f0046182.jpg` = pid 0001, camera 2, frame 0046182.
DUKE_PATTERN = re.compile(r"^(\d{4})_c(\d)_f(\d+)\.jpg$")
DUKE_EXAMPLE = "0001_c2_f0046182.jpg (pid_c{cam}_f{frame}.jpg)"
DUKE_NUM_CAMERAS = 8

# MSMT17 (V1 and V2): `0000_000_01_0303morning_0015_0.jpg` = pid 0000, image 000 of
# that pid, camera 01 (1-based, 15 cameras), date (mmdd) + time of day
# (morning/noon/afternoon), frame, box.
MSMT_PATTERN = re.compile(r"^(\d{4})_(\d+)_(\d{2})_(\d{4}[a-z]+)_(\d+)_(\d+)\.jpg$")
MSMT_EXAMPLE = "0000_000_01_0303morning_0015_0.jpg (pid_idx_cam_{date}{time}_frame_box.jpg)"
MSMT_NUM_CAMERAS = 15

# CUHK03-NP (Zhong et al., CVPR 2017 release): `0001_c1_1.png` = pid 0001, camera 1
# (of the pair that saw the person), image index.
CUHK03_NP_PATTERN = re.compile(r"^(\d{4})_c([12])_(\d+)\.png$")
CUHK03_NP_EXAMPLE = "0001_c1_1.png (pid_c{cam}_{index}.png)"
CUHK03_NP_NUM_CAMERAS = 2


def canonical_name(file_name: str) -> str:
  """`file_name` with its extension lower-cased: 'X.JPG' -> 'X.jpg' (the parsers' input)."""
  stem, ext = os.path.splitext(file_name)
  return stem + ext.lower()


def is_image_name(file_name: str) -> bool:
  """Whether bare `file_name` is an image file: extension in IMAGE_EXTENSIONS (any case)
  and not OS litter (`manual_files.is_ignored`)."""
  return os.path.splitext(file_name)[1].lower() in IMAGE_EXTENSIONS and not manual_files.is_ignored(
    file_name
  )


def _match(pattern: re.Pattern[str], file_name: str, example: str, dataset: str):
  m = pattern.match(canonical_name(file_name))
  if m is None:
    raise ValueError(
      f"{dataset}: file name {file_name!r} does not match the expected pattern "
      f"{pattern.pattern!r}, e.g. {example}."
    )
  return m


def _camera(cam: int, num_cameras: int, file_name: str, dataset: str) -> int:
  if not 1 <= cam <= num_cameras:
    raise ValueError(
      f"{dataset}: file name {file_name!r} has camera {cam}, outside 1..{num_cameras}."
    )
  return cam - 1


def parse_market_name(file_name: str) -> tuple[int, int]:
  """Market-1501 name -> (pid, camid 0-based); pid -1 = junk, 0 = distractor."""
  m = _match(MARKET_PATTERN, file_name, MARKET_EXAMPLE, "Market-1501")
  return int(m.group(1)), _camera(int(m.group(2)), MARKET_NUM_CAMERAS, file_name, "Market-1501")


def parse_duke_name(file_name: str) -> tuple[int, int]:
  """DukeMTMC-reID name -> (pid, camid 0-based)."""
  m = _match(DUKE_PATTERN, file_name, DUKE_EXAMPLE, "DukeMTMC-reID")
  return int(m.group(1)), _camera(int(m.group(2)), DUKE_NUM_CAMERAS, file_name, "DukeMTMC-reID")


def parse_msmt17_name(file_name: str) -> tuple[int, int]:
  """MSMT17 name -> (pid, camid 0-based); the camera is the third field (1-based).

  The pid returned is the one in the name; the list files carry the pid the
  protocol uses (the builder checks the two agree).
  """
  m = _match(MSMT_PATTERN, file_name, MSMT_EXAMPLE, "MSMT17")
  return int(m.group(1)), _camera(int(m.group(3)), MSMT_NUM_CAMERAS, file_name, "MSMT17")


def parse_cuhk03_np_name(file_name: str) -> tuple[int, int]:
  """CUHK03-NP name -> (pid, camid 0-based)."""
  m = _match(CUHK03_NP_PATTERN, file_name, CUHK03_NP_EXAMPLE, "CUHK03-NP")
  return int(m.group(1)), _camera(int(m.group(2)), CUHK03_NP_NUM_CAMERAS, file_name, "CUHK03-NP")


_PARSERS = (
  (MARKET_PATTERN, parse_market_name),
  (DUKE_PATTERN, parse_duke_name),
  (MSMT_PATTERN, parse_msmt17_name),
  (CUHK03_NP_PATTERN, parse_cuhk03_np_name),
)


def parse_person_camera(file_name: str) -> tuple[int, int]:
  """(pid, camid 0-based) from a name in any of the schemes above (they do not overlap).

  Raises:
    ValueError: the name follows none of them (the message lists the patterns).
  """
  for pattern, parse in _PARSERS:
    if pattern.match(canonical_name(file_name)):
      return parse(file_name)
  raise ValueError(
    f"file name {file_name!r} follows no known ReID naming scheme: "
    f"{[p.pattern for p, _ in _PARSERS]}."
  )
