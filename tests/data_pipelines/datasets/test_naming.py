"""File-name parsers: hand-checked names of each dataset, and malformed ones."""

import pytest

from data_pipelines.datasets import naming


@pytest.mark.parametrize(
  "name, expected",
  [
    ("0002_c1s1_000451_03.jpg", (2, 0)),
    ("1501_c6s4_001877_02.jpg", (1501, 5)),
    ("-1_c3s2_000301_00.jpg", (-1, 2)),  # junk
    ("0000_c5s3_015240_04.jpg", (0, 4)),  # distractor
  ],
)
def test_market(name, expected):
  assert naming.parse_market_name(name) == expected


@pytest.mark.parametrize(
  "name, expected",
  [("0001_c2_f0046182.jpg", (1, 1)), ("7140_c8_f0213514.jpg", (7140, 7))],
)
def test_duke(name, expected):
  assert naming.parse_duke_name(name) == expected


@pytest.mark.parametrize(
  "name, expected",
  [
    ("0000_000_01_0303morning_0015_0.jpg", (0, 0)),
    ("1040_012_15_0113noon_0942_1.jpg", (1040, 14)),
    ("3059_004_07_0302afternoon_1225_2.jpg", (3059, 6)),
  ],
)
def test_msmt17_camera_is_third_field(name, expected):
  assert naming.parse_msmt17_name(name) == expected


@pytest.mark.parametrize(
  "name, expected", [("0001_c1_1.png", (1, 0)), ("1467_c2_10.png", (1467, 1))]
)
def test_cuhk03_np(name, expected):
  assert naming.parse_cuhk03_np_name(name) == expected


@pytest.mark.parametrize(
  "parse, name",
  [
    (naming.parse_market_name, "0002_c1_f0046182.jpg"),  # a Duke name
    (naming.parse_market_name, "0002_c1s1_000451_03.png"),
    (naming.parse_market_name, "2_c1s1_000451_03.jpg"),
    (naming.parse_market_name, "0002_c7s1_000451_03.jpg"),  # camera out of 1..6
    (naming.parse_duke_name, "0001_c9_f0046182.jpg"),  # camera out of 1..8
    (naming.parse_duke_name, "0002_c1s1_000451_03.jpg"),
    (naming.parse_msmt17_name, "0000_000_16_0303morning_0015_0.jpg"),  # camera 16
    (naming.parse_msmt17_name, "0000_000_00_0303morning_0015_0.jpg"),  # camera 0
    (naming.parse_msmt17_name, "0000_c1_0303morning_0015_0.jpg"),
    (naming.parse_cuhk03_np_name, "0001_c3_1.png"),
    (naming.parse_cuhk03_np_name, "0001_c1_1.jpg"),
  ],
)
def test_bad_names_raise_naming_the_file(parse, name):
  with pytest.raises(ValueError) as err:
    parse(name)
  assert name in str(err.value)


def test_parse_person_camera_dispatches_on_the_scheme():
  assert naming.parse_person_camera("0002_c1s1_000451_03.jpg") == (2, 0)
  assert naming.parse_person_camera("0001_c2_f0046182.jpg") == (1, 1)
  assert naming.parse_person_camera("0004_001_09_0303morning_0015_0.jpg") == (4, 8)
  assert naming.parse_person_camera("0005_c2_3.png") == (5, 1)
  with pytest.raises(ValueError, match="holiday.jpg"):
    naming.parse_person_camera("holiday.jpg")
