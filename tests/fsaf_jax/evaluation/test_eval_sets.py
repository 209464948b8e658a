"""Tests of `eval_sets` (`config.eval.datasets`) and of a training run evaluating two sets.

The run is the tiny model on the tiny synthetic training set, evaluated on two other
synthetic sets (two seeds, two folders) named 'market1501@<folder>': two tables
printed, each set's metrics.json and figures in its own folder, TensorBoard scalars
prefixed by the set, and each set's metrics equal to a separate evaluation of the
trained variables on that set alone.
"""

import dataclasses
import json
import os
import shutil

import ml_collections
import pytest

from configs import tiny
from data_pipelines import errors, synthetic
from fsaf_jax.core import checkpoint_restore
from fsaf_jax.evaluation import eval_sets, evaluator, writers
from fsaf_jax.training import train_loop
from tests.reference import tiny_synthetic_run

pytestmark = pytest.mark.filterwarnings("ignore:.*queries have no positive:UserWarning")


def config_with(datasets, data_dir="/data/tfds", manual_dir="/data/market"):
  config = tiny.get_config()
  config.input.dataset = "market1501"
  config.input.data_dir = data_dir
  config.input.manual_dir = manual_dir
  config.eval.datasets = tuple(datasets)
  return config


def test_default_is_the_training_set_in_the_single_set_layout():
  (only,) = eval_sets.eval_sets(config_with(()))
  assert only == eval_sets.EvalSet("market1501", "market1501", "/data/tfds", "/data/market")
  assert only.folder is None and not only.build


def test_entries_resolve_to_labels_data_dirs_and_folders():
  sets = eval_sets.eval_sets(
    config_with(
      [
        "market1501",  # the training set
        "dukemtmc_reid@~/duke",
        "msmt17/v2",
        "market1501@/synth/a",  # another copy of the training set's dataset
        "market1501@/synth/b/",
      ]
    )
  )
  home = os.path.expanduser("~")
  assert [(s.name, s.label, s.data_dir, s.manual_dir, s.folder) for s in sets] == [
    ("market1501", "market1501", "/data/tfds", "/data/market", "market1501"),
    ("dukemtmc_reid", "dukemtmc_reid", "/data/tfds", f"{home}/duke", "dukemtmc_reid"),
    ("msmt17/v2", "msmt17_v2", "/data/tfds", None, "msmt17_v2"),
    ("market1501", "market1501@a", "/data/tfds/market1501@a", "/synth/a", "market1501@a"),
    ("market1501", "market1501@b", "/data/tfds/market1501@b", "/synth/b", "market1501@b"),
  ]
  assert all(s.build for s in sets)
  # The training set's own folder named explicitly is the training set.
  (same,) = eval_sets.eval_sets(config_with(["market1501@/data/market"]))
  assert (same.label, same.data_dir) == ("market1501", "/data/tfds")


@pytest.mark.parametrize(
  "datasets, message",
  [
    ("market1501", "must be a tuple"),
    ([3], "entry 3"),
    (["@/x"], "entry '@/x'"),
    (["market1501@"], "entry 'market1501@'"),
    (["market1501@/a/x", "market1501@/b/x"], "both 'market1501@x'"),
    (["dukemtmc_reid", "dukemtmc_reid"], "both 'dukemtmc_reid'"),
  ],
)
def test_bad_entries_are_named(datasets, message):
  config = config_with(())
  config.eval = ml_collections.ConfigDict({**config.eval.to_dict(), "datasets": datasets})
  with pytest.raises(errors.UserError, match=message.replace("(", r"\(")):
    eval_sets.eval_sets(config)


@pytest.mark.slow  # a training run, two synthetic sets generated and built (~2 min)
def test_run_evaluates_two_synthetic_sets(data_root, tmp_path, capsys):
  data = tmp_path / "data"
  shutil.copytree(data_root, data)  # the session's data stay as they are
  folders = {}
  for name, seed in (("synth_a", 1), ("synth_b", 2)):
    folders[name] = tmp_path / name
    synthetic.generate(folders[name], dataclasses.replace(tiny_synthetic_run.SYNTHETIC, seed=seed))
  config = tiny_synthetic_run.config(data)
  config.train.num_epochs = 1
  config.eval.datasets = tuple(f"market1501@{folder}" for folder in folders.values())
  workdir = tmp_path / "work"
  result = train_loop.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out

  step = result.step
  labels = ["market1501@synth_a", "market1501@synth_b"]
  assert [ev.label for ev in result.evaluators] == labels
  assert (workdir / "eval" / "latest").read_text() == f"step_{step}\n"
  saved = {}
  for label in labels:
    assert f"step {step}: {label}, cosine distance\n" in out  # one table per set
    folder = workdir / "eval" / f"step_{step}" / label
    for name in ("metrics.json", "ranked_list.png", "distances.png", "roc.png",
                 "activation_maps.png"):  # fmt: skip
      assert (folder / name).is_file(), folder / name
    saved[label] = json.loads((folder / "metrics.json").read_text())
    assert saved[label]["label"] == label
    assert saved[label]["data_dir"] == os.path.join(config.input.data_dir, label)  # @ folder
    assert set(saved[label]["roc"]) == {"TPR@FPR=1e-04", "TPR@FPR=1e-03", "TPR@FPR=1e-02"}
  assert not (workdir / "eval" / f"step_{step}" / "metrics.json").exists()
  # Two different sets: different figures.
  assert saved[labels[0]]["metrics"]["cmc"] != saved[labels[1]]["metrics"]["cmc"]
  assert result.eval == result.evals[0] and len(result.evals) == 2
  scalars = writers.scalars(result.results)
  assert scalars[f"{labels[1]}/mAP"] == saved[labels[1]]["metrics"]["mAP"]
  assert f"{labels[0]}/TPR@FPR=1e-02" in scalars and "mAP" not in scalars

  # A set alone (eval.py's path: restore, evaluate; its build found again) gives the
  # same metrics.
  _, _, variables = checkpoint_restore.restore_for_inference(workdir)
  alone = tiny_synthetic_run.config(data)
  alone.eval.datasets = (f"market1501@{folders['synth_b']}",)
  again = evaluator.evaluate_model(alone, variables, outdir=None, write_figure=False)
  assert again["label"] == "market1501"
  assert again["data_dir"] == os.path.join(config.input.data_dir, labels[1])
  assert again["metrics"]["mAP"] == pytest.approx(saved[labels[1]]["metrics"]["mAP"], abs=1e-6)
