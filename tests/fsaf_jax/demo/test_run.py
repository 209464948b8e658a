"""Tests of the demo's run (fsaf_jax/demo/run.py) and its untrained network
(fsaf_jax/demo/untrained.py), on the tiny synthetic run (tests/reference/tiny_synthetic_run.py)
made a demo config (the data already there with its settings): training, the comparison."""

import dataclasses
import json

import jax
import ml_collections
import numpy as np
import pytest

from configs import demo, tiny
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.core.mesh import make_mesh
from fsaf_jax.demo import baselines, untrained
from fsaf_jax.demo import run as demo_run
from fsaf_jax.training import setup
from tests.reference import tiny_synthetic_run as run

TOTAL_STEPS = run.STEPS_PER_EPOCH * run.NUM_EPOCHS


def tiny_demo_config(data_root) -> ml_collections.ConfigDict:
  """The tiny run as a demo config: its synthetic settings in a `demo` section."""
  c = run.config(data_root)
  fields = dataclasses.asdict(run.SYNTHETIC)
  c.demo = ml_collections.ConfigDict({"synthetic": fields, "compare_baselines": True})
  return c


@pytest.fixture(scope="module")
def demo_run_result(data_root, tmp_path_factory):
  """A tiny demo run: (workdir, DemoResult, the variables training started from)."""
  workdir = tmp_path_factory.mktemp("demo")
  start = {}
  create_train_state = setup.create_train_state

  def recording(*args, **kwargs):
    state = create_train_state(*args, **kwargs)
    start["variables"] = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    return state

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(setup, "create_train_state", recording)
    result = demo_run.run_demo(tiny_demo_config(data_root), workdir, config_name="tiny_demo")
  return workdir, result, start["variables"]


def test_only_the_demo_config_is_a_demo_config():
  assert demo_run.is_demo_config(demo.get_config())
  assert not demo_run.is_demo_config(tiny.get_config())


def test_training_config_drops_the_demo_section():
  c = demo.get_config()
  t = demo_run.training_config(c)
  assert "demo" not in t and "demo" in c
  assert t.to_dict() == {k: v for k, v in c.to_dict().items() if k != "demo"}


def test_untrained_variables_are_what_training_starts_from(demo_run_result):
  workdir, result, start = demo_run_result
  again = untrained.untrained_variables(result.train.config, make_mesh())
  assert jax.tree.structure(again) == jax.tree.structure(start)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(start), strict=True):
    np.testing.assert_array_equal(a, b)
  # Training moved them: the comparison above is not of two trained networks.
  _, trained = checkpoint_restore.restore_variables(workdir)
  assert any(
    not np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(start), strict=True)
  )


def test_untrained_needs_the_resolved_config():
  with pytest.raises(ValueError, match="num_classes=-1"):
    untrained.untrained_variables(tiny.get_config(), make_mesh())


def test_demo_run_trains_and_writes_the_comparison(demo_run_result, capsys):
  workdir, result, _ = demo_run_result
  assert result.train.step == TOTAL_STEPS and result.train.signal is None
  # The training loop saw no demo field: config.json has none.
  saved = json.loads((workdir / "config.json").read_text())
  assert "demo" not in saved and "synthetic" not in saved["input"]
  path = workdir / "eval" / f"step_{TOTAL_STEPS}" / baselines.BASELINES_FILE
  written = json.loads(path.read_text())
  assert written == json.loads(json.dumps(result.baselines))
  assert written["trained"]["mAP"] == pytest.approx(result.train.eval["metrics"]["mAP"])
  for row in ("trained", "untrained", "colour_histogram"):
    assert 0.0 <= written[row]["mAP"] <= 1.0 and 0.0 <= written[row]["rank1"] <= 1.0
  rows = [line.split("  ")[0] for line in written["table"].splitlines()[2:]]  # header, rule
  assert rows == [
    f"FSAF trained (step {TOTAL_STEPS})",
    "FSAF untrained (init only)",
    "colour histogram (HSV)",
  ]


def test_comparison_switched_off_writes_none(data_root, tmp_path, monkeypatch):
  c = tiny_demo_config(data_root)
  c.demo.compare_baselines = False
  c.train.num_epochs = 1
  called = []
  monkeypatch.setattr(baselines, "compare_baselines", lambda *a, **k: called.append(a))
  result = demo_run.run_demo(c, tmp_path)
  assert result.baselines is None and not called
  assert not list((tmp_path / "eval").glob(f"*/{baselines.BASELINES_FILE}"))
