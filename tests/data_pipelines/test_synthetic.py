"""Tests of the embedded synthetic dataset: Market layout, counts, determinism, difficulty."""

import collections
import dataclasses
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic
from data_pipelines import synthetic_render as render
from data_pipelines.datasets import naming
from fsaf_jax.demo import color_histogram as chb
from tests.reference import ceiling

SMALL = synthetic.SyntheticConfig(
  num_ids=14,
  num_train_ids=6,
  train_images_per_id=3,
  query_per_id=2,
  gallery_per_id=3,
  num_cameras=5,
  min_cameras_per_id=2,
  num_distractors=4,
  num_junk=3,
  seed=3,
)
REPO = pathlib.Path(__file__).resolve().parents[2]


def _files(out: pathlib.Path) -> dict[str, list[str]]:
  root = out / synthetic.MARKET_DIR
  return {split: sorted(p.name for p in (root / split).iterdir()) for split in synthetic.SPLIT_DIRS}


def _parsed(names):
  return [naming.parse_market_name(n) for n in names]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("synth_small")
  synthetic.generate(out, SMALL)
  return out


def test_market_name_format():
  assert synthetic.market_name(2, 1, 1, 451, 3) == "0002_c1s1_000451_03.jpg"
  assert synthetic.market_name(-1, 6, 2, 401, 3) == "-1_c6s2_000401_03.jpg"
  assert synthetic.market_name(0, 3, 5, 12, 1) == "0000_c3s5_000012_01.jpg"


def test_layout_and_names(small_dataset):
  root = small_dataset / synthetic.MARKET_DIR
  assert sorted(p.name for p in root.iterdir()) == sorted(synthetic.SPLIT_DIRS)
  for split, names in _files(small_dataset).items():
    assert names, split
    for name in names:
      assert naming.MARKET_PATTERN.match(name), name
      pid, camid = naming.parse_market_name(name)
      assert 0 <= camid < SMALL.num_cameras
    for name in names[:5]:
      with Image.open(root / split / name) as im:
        assert im.format == "JPEG"
        assert im.mode == "RGB"
        assert im.size == (64, 128)  # (W, H)


def test_counts_match_config(small_dataset):
  files = _files(small_dataset)
  pids = {split: [pid for pid, _ in _parsed(names)] for split, names in files.items()}
  train, query, gallery = (pids[s] for s in synthetic.SPLIT_DIRS)
  test_ids = SMALL.num_ids - SMALL.num_train_ids
  assert len(train) == SMALL.num_train_ids * SMALL.train_images_per_id
  assert len(set(train)) == SMALL.num_train_ids
  assert all(c == SMALL.train_images_per_id for c in collections.Counter(train).values())
  assert len(query) == test_ids * SMALL.query_per_id
  assert len(set(query)) == test_ids
  assert len(gallery) == test_ids * SMALL.gallery_per_id + SMALL.num_distractors + SMALL.num_junk
  counts = collections.Counter(gallery)
  assert counts.pop(0) == SMALL.num_distractors
  assert counts.pop(-1) == SMALL.num_junk
  assert len(counts) == test_ids
  assert all(c == SMALL.gallery_per_id for c in counts.values())


def test_junk_and_distractors_only_in_gallery(small_dataset):
  files = _files(small_dataset)
  for split in (synthetic.TRAIN_DIR, synthetic.QUERY_DIR):
    assert all(pid > 0 for pid, _ in _parsed(files[split])), split
  gallery_names = files[synthetic.GALLERY_DIR]
  assert any(n.startswith("-1_") for n in gallery_names)
  assert any(n.startswith("0000_") for n in gallery_names)


def test_train_and_test_identities_disjoint(small_dataset):
  files = _files(small_dataset)
  train = {pid for pid, _ in _parsed(files[synthetic.TRAIN_DIR])}
  test = {pid for pid, _ in _parsed(files[synthetic.GALLERY_DIR]) if pid > 0}
  query = {pid for pid, _ in _parsed(files[synthetic.QUERY_DIR])}
  assert not train & test
  assert not train & query
  assert query == test


def test_every_query_has_a_cross_camera_gallery_match(small_dataset):
  files = _files(small_dataset)
  gallery = _parsed(files[synthetic.GALLERY_DIR])
  query = _parsed(files[synthetic.QUERY_DIR])
  for pid, cam in query:
    assert any(g_pid == pid and g_cam != cam for g_pid, g_cam in gallery), (pid, cam)
  # One query per camera per identity, as in Market-1501.
  assert len(set(query)) == len(query)


def test_every_identity_seen_by_min_cameras(small_dataset):
  files = _files(small_dataset)
  cams = collections.defaultdict(set)
  for split in (synthetic.TRAIN_DIR, synthetic.GALLERY_DIR):
    for pid, cam in _parsed(files[split]):
      if pid > 0:
        cams[pid].add(cam)
  assert min(len(c) for c in cams.values()) >= SMALL.min_cameras_per_id


def test_same_seed_same_bytes_other_seed_other_images(small_dataset, tmp_path):
  again = tmp_path / "again"
  synthetic.generate(again, SMALL)
  files = _files(small_dataset)
  assert _files(again) == files
  for split, names in files.items():
    for name in names:
      a = (small_dataset / synthetic.MARKET_DIR / split / name).read_bytes()
      b = (again / synthetic.MARKET_DIR / split / name).read_bytes()
      assert a == b, f"{split}/{name} differs between two runs with the same seed"
  other = tmp_path / "other"
  synthetic.generate(other, dataclasses.replace(SMALL, seed=SMALL.seed + 1))
  other_files = _files(other)
  assert other_files != files
  # Same plan position, different seed: different pixels.
  for split in synthetic.SPLIT_DIRS:
    a = np.asarray(
      Image.open(small_dataset / synthetic.MARKET_DIR / split / files[split][0]), np.float32
    )
    b = np.asarray(
      Image.open(other / synthetic.MARKET_DIR / split / other_files[split][0]), np.float32
    )
    assert np.abs(a - b).mean() > 5.0, split


def test_existing_output_needs_overwrite(small_dataset, tmp_path):
  out = tmp_path / "ds"
  synthetic.generate(out, SMALL)
  with pytest.raises(FileExistsError, match="overwrite"):
    synthetic.generate(out, SMALL)
  smaller = dataclasses.replace(SMALL, seed=11, num_ids=8, num_train_ids=-1)
  synthetic.generate(out, smaller, overwrite=True)
  # No stale file of the first run is left behind.
  expected = collections.defaultdict(list)
  for spec in synthetic.make_plan(smaller).images:
    expected[spec.split].append(spec.file_name)
  assert _files(out) == {s: sorted(expected[s]) for s in synthetic.SPLIT_DIRS}


@pytest.mark.parametrize(
  "change, field",
  [
    (dict(query_per_id=3, min_cameras_per_id=2), "query_per_id"),
    (dict(num_cameras=7), "num_cameras"),
    (dict(gallery_per_id=1), "gallery_per_id"),
    (dict(num_ids=1), "num_ids"),
    (dict(num_train_ids=14), "num_train_ids"),
    (dict(difficulty=render.Difficulty(palette_size=2)), "palette_size"),
  ],
)
def test_invalid_config_is_rejected_with_the_field(change, field):
  with pytest.raises(ValueError, match=field):
    synthetic.make_plan(dataclasses.replace(SMALL, **change))


def test_identities_share_colours_and_colour_multisets():
  plan = synthetic.make_plan(synthetic.SyntheticConfig())
  test = [plan.identities[i] for i in plan.test]
  # Every colour used as a top is the top of several identities.
  tops = collections.Counter(ident.top_index for ident in test)
  assert len(tops) <= synthetic.SyntheticConfig().difficulty.palette_size
  assert min(tops.values()) >= 2
  # Pairs with the same colour multiset but another arrangement, among them pairs whose
  # top and bottom colours are swapped (red top / blue trousers vs blue top / red ...).
  same_multiset = swapped = 0
  for i, a in enumerate(test):
    for b in test[i + 1 :]:
      if a.colour_multiset() == b.colour_multiset():
        assert a.arrangement() != b.arrangement()
        same_multiset += 1
        swapped += a.top == b.bottom and a.bottom == b.top
  assert same_multiset >= len(test) // 2
  assert swapped >= 5


def test_colour_histogram_cannot_separate_siblings():
  """Histogram distance between siblings ~ between two images of the same person.

  A and B share every colour, B with top and bottom swapped; C is A with another top
  colour. Over views from different cameras, the baseline's histogram distance A-B is
  no larger than A-A (so ranking by histograms cannot separate them), while A-C is (so
  the measurement can tell a colour change). The renderer still puts A's top colour on
  A's torso and B's on B's: the arrangement is in the pixels.
  """
  d = render.Difficulty()
  cams = render.make_cameras(np.random.default_rng(1), 6, d, (128, 64))
  rng = np.random.default_rng(5)
  dist = collections.defaultdict(list)

  def hist(ident, seed, cam):
    image = render.render_image(np.random.default_rng(seed), ident, cams[cam], d)
    return chb.color_histogram(image, center_sigma=chb.DEFAULT_CENTER_SIGMA)[None]

  for trial in range(8):
    a = render.make_identities(rng, 1, d)[0]
    b = dataclasses.replace(
      a, top=a.bottom, bottom=a.top, top_index=a.bottom_index, bottom_index=a.top_index
    )
    c_index = (
      next(
        i
        for i in range(trial, trial + 12)
        if i % 12 not in (a.top_index, a.bottom_index, a.accent_index)
      )
      % d.palette_size
    )
    c = dataclasses.replace(a, top=render.PALETTE[c_index][1], top_index=c_index)
    assert a.colour_multiset() == b.colour_multiset() != c.colour_multiset()
    for s in range(10):
      ha = hist(a, [trial, s], s % 6)
      for key, other in (("AA", a), ("AB", b), ("AC", c)):
        dist[key].append(
          chb.histogram_distance(ha, hist(other, [trial, 100 + s], (s + 1) % 6))[0, 0]
        )
  aa, ab, ac = (float(np.mean(dist[k])) for k in ("AA", "AB", "AC"))
  assert ab <= aa * 1.05, (aa, ab)
  assert ac > aa + 0.02, (aa, ac)

  # Clean render (no clutter, occlusion or camera effects): torso pixel = top colour.
  clean = render.Difficulty(
    colour_cast=0,
    illumination=0,
    image_jitter=0,
    blur=0,
    resolution_loss=0,
    noise=0,
    clutter=0,
    occlusion_prob=0,
    pose_jitter=0,
    side_view_prob=0,
  )
  cam = render.make_cameras(np.random.default_rng(0), 1, clean, (128, 64))[0]
  cam = dataclasses.replace(cam, gamma=1.0, contrast=1.0, brightness=1.0, person_scale=0.9)
  plain = dataclasses.replace(a, accent_use="hat", build=1.0, height=1.0, leg_ratio=0.5)
  for ident in (plain, dataclasses.replace(plain, top=a.bottom, bottom=a.top)):
    image = render.render_image(np.random.default_rng(0), ident, cam, clean)
    torso = image[40:56, 28:36].reshape(-1, 3).mean(0)  # chest, centre of the box
    np.testing.assert_allclose(torso, ident.top, atol=12)


def test_cli_prints_statistics_and_counts_match_flags(tmp_path):
  out = tmp_path / "cli"
  cmd = [
    sys.executable,
    "-m",
    "data_pipelines.synthetic",
    f"--out={out}",
    "--ids=10",
    "--images_per_id=2",
    "--query_per_id=1",
    "--gallery_per_id=2",
    "--distractors=2",
    "--junk=1",
    "--cameras=3",
    "--seed=7",
  ]
  res = ceiling.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
  assert "bounding_box_train" in res.stdout and "query" in res.stdout, res.stdout
  files = _files(out)
  assert len(files[synthetic.TRAIN_DIR]) == 5 * 2
  assert len(files[synthetic.QUERY_DIR]) == 5 * 1
  assert len(files[synthetic.GALLERY_DIR]) == 5 * 2 + 2 + 1
  cams = {cam for names in files.values() for _, cam in _parsed(names)}
  assert cams <= {0, 1, 2}
  assert (out / "synthetic.json").is_file()
  # Refuses to write over an existing dataset without --overwrite.
  res = ceiling.run(cmd, cwd=REPO, capture_output=True, text=True)
  assert res.returncode != 0 and "overwrite" in res.stderr
