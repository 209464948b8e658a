"""Tests of the demo's data setup (fsaf_jax/demo/synthetic_data.py): the synthetic
dataset configs/demo.py asks for, where it goes, and what is refused."""

import dataclasses

import pytest

from configs import demo
from data_pipelines import synthetic, synthetic_render
from fsaf_jax.demo import synthetic_data
from tests.reference import tiny_synthetic_run as run


def test_demo_config_asks_for_the_demo_dataset():
  """configs/demo.py's fields give the demo's dataset: 1,100 identities (1,000 train),
  the generator's defaults elsewhere, four difficulty knobs eased (written out here)."""
  got = synthetic_data.synthetic_config(demo.get_config().demo.synthetic)
  want = dataclasses.replace(
    synthetic.SyntheticConfig(),
    num_ids=1100,
    num_train_ids=1000,
    difficulty=dataclasses.replace(
      synthetic_render.Difficulty(), group_size=2, blur=0.5, occlusion_prob=0.1, pose_jitter=0.5
    ),
  )
  assert got == want
  got.validate()


def test_every_generator_field_is_in_the_demo_config():
  fields = demo.get_config().demo.synthetic
  assert set(fields) == {f.name for f in dataclasses.fields(synthetic.SyntheticConfig)}
  assert set(fields.difficulty) == {f.name for f in dataclasses.fields(synthetic_render.Difficulty)}


def test_manual_dir_defaults_to_the_workdir(tmp_path):
  c = demo.get_config()
  resolved = synthetic_data.resolve_manual_dir(c, tmp_path / "w")
  assert resolved.input.manual_dir == str(tmp_path / "w" / "data" / "synthetic")
  assert c.input.manual_dir == ""  # input unchanged
  c.input.manual_dir = str(tmp_path / "mine")
  assert synthetic_data.resolve_manual_dir(c, tmp_path / "w").input.manual_dir == str(
    tmp_path / "mine"
  )


def test_prepare_synthetic_keeps_data_written_with_the_same_settings(data_root, tmp_path):
  c = run.config(data_root)  # the tiny run's data, already written with these settings
  c.input.data_dir = str(data_root / "tfds")
  before = sorted(p.name for p in (data_root / "synthetic").rglob("*"))
  out = synthetic_data.prepare_synthetic(c, tmp_path / "w", wanted=run.SYNTHETIC)
  assert out.input.manual_dir == str(data_root / "synthetic")
  assert out.input.data_dir == str(data_root / "tfds")
  assert not synthetic_data.ensure_synthetic(out, run.SYNTHETIC)  # nothing written
  assert sorted(p.name for p in (data_root / "synthetic").rglob("*")) == before
  assert not (tmp_path / "w").exists()


def test_synthetic_data_with_other_settings_is_refused(data_root):
  c = run.config(data_root)
  wanted = dataclasses.replace(run.SYNTHETIC, num_ids=30)
  with pytest.raises(ValueError, match="num_ids: on disk 20, config 30"):
    synthetic_data.ensure_synthetic(c, wanted)


def test_another_dataset_is_refused(tmp_path):
  c = run.config(tmp_path)
  c.input.dataset = "dukemtmc_reid"
  with pytest.raises(ValueError, match="config.input.dataset='dukemtmc_reid'"):
    synthetic_data.ensure_synthetic(c, run.SYNTHETIC)
  assert not (tmp_path / "synthetic").exists()
