"""Training on several sets combined (`config.input.datasets`, `combineall`), on two tiny
synthetic Market-1501 sets checked against their union built by hand from the file
names (tests/reference/two_synthetic_sets.py)."""

import collections
import json

import numpy as np
import pytest

from data_pipelines.pk_sampler import PKSampler
from fsaf_jax.core import checkpoint_restore, errors
from fsaf_jax.training import checkpoint, data_setup, run_card, setup, train_loop
from tests.reference import two_synthetic_sets as two_sets

P, K = 4, 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """The two synthetic folders, both built (each into its own data_dir)."""
  root = tmp_path_factory.mktemp("two_sets")
  two_sets.write(root)
  data_setup.prepare_dataset(two_sets.config(root), root / "unused_workdir")
  return root


def _resolved(root, combineall=False):
  c = two_sets.config(root)
  c.input.combineall = combineall
  return data_setup.resolve_data_paths(c, root / "unused_workdir")


def _bot_epoch(labels) -> int:
  """BoT's RandomIdentitySampler length in batches: sum_i max(n_i, K) // K, over P."""
  counts = collections.Counter(labels).values()
  return sum(max(n, K) // K for n in counts) // P


@pytest.mark.parametrize("combineall", [False, True], ids=["train", "combineall"])
def test_union_matches_the_hand_built_union(root, combineall):
  data = data_setup.load_training_data(_resolved(root, combineall))
  hand = two_sets.hand_union(root, combineall)
  got = sorted((r["file_name"], r["person_id"], r["camera_id"]) for r in data.source)
  assert got == sorted(hand.records)
  assert data.num_classes == hand.num_classes == len({lab for _, lab, _ in hand.records})
  np.testing.assert_array_equal(data.person_ids, [r["person_id"] for r in data.source])
  assert [(s.ids, s.images, s.cameras) for s in data.sets] == list(
    zip(hand.ids, hand.images, hand.cameras, strict=True)
  )
  # The sets never share an identity or a camera.
  a, b = len(data.source) - hand.images[1], hand.images[1]
  assert max(data.source.person_ids[:a]) < min(data.source.person_ids[a : a + b])
  assert max(data.source.camera_ids[:a]) < min(data.source.camera_ids[a : a + b])
  if combineall:  # query + gallery ids joined after the training ids; distractors out
    train_ids = two_sets.tiny_synthetic_run.NUM_TRAIN_IDS
    assert [s.joined_ids for s in data.sets] == [n - train_ids for n in hand.ids]
    assert all(s.left_out_images == two_sets.tiny_synthetic_run.SYNTHETIC.num_distractors
               for s in data.sets)  # fmt: skip


@pytest.mark.parametrize("combineall", [False, True], ids=["train", "combineall"])
def test_sampler_epoch_is_bots_formula_on_the_union(root, combineall):
  data = data_setup.load_training_data(_resolved(root, combineall))
  hand = two_sets.hand_union(root, combineall)
  sampler = PKSampler(data.person_ids, num_identities=P, num_instances=K, seed=0, mode="bot")
  assert sampler.batches_per_epoch == _bot_epoch([lab for _, lab, _ in hand.records])
  assert sampler.num_ids == hand.num_classes


def test_paths_resolve_per_set(root, monkeypatch):
  resolved = _resolved(root)
  a, b = root / "synth_a", root / "synth_b"
  assert [(s.name, s.data_dir, s.manual_dir) for s in data_setup.training_sets(resolved)] == [
    ("market1501", str(root / "tfds"), str(a)),
    ("market1501", str(root / "tfds" / "market1501@synth_b"), str(b)),  # a second copy
  ]
  assert resolved.input.manual_dir == str(a)  # the first (evaluated) set's folder
  c = two_sets.config(root)
  monkeypatch.chdir(root)
  c.input.datasets = ("market1501", "market1501@synth_b")  # relative folder
  c.input.manual_dir = "synth_a"  # the first set's, its entry giving none
  resolved = data_setup.resolve_data_paths(c, root / "w")
  assert resolved.input.datasets == (f"market1501@{a}", f"market1501@{b}")
  assert resolved.input.manual_dir == str(a)


@pytest.mark.parametrize(
  "change, message",
  [
    (
      {"dataset": "dukemtmc_reid"},
      r"config.input.dataset='dukemtmc_reid' but config.input.datasets starts with "
      "'market1501'",
    ),
    ({"manual_dir": "/x"}, r"config.input.manual_dir='/x' but config.input.datasets reads"),
    ({"datasets": ("market1501,dukemtmc_reid",)}, r"must be a TFDS name or 'name@folder'"),
    ({"datasets": ("market1501@",)}, r"must be a TFDS name or 'name@folder'"),
    ({"datasets": ("market1501@/a", "market1501@/a")}, r"lists 'market1501' from /a twice"),
    (
      {"datasets": ("market1501", "market1501@/x/s", "market1501@/y/s")},
      r"twice \(two folders of one base name\)",
    ),
  ],
)
def test_bad_lists_are_refused_before_any_work(tmp_path, change, message):
  c = two_sets.config(tmp_path)
  for field, value in change.items():
    c.input[field] = value
  with pytest.raises(errors.UserError, match=message):
    setup.check_settings(c)
  assert not any(tmp_path.iterdir())


# --- A combined run. -----------------------------------------------------------------------


def _run_config(root):
  c = two_sets.config(root)
  c.input.sampler = "bot"
  c.train.num_epochs = 1
  c.train.steps_per_epoch = 2
  return c


@pytest.fixture(scope="module")
def combined_setup(root, tmp_path_factory):
  """What a run on the union has before its first step (`setup.setup_run`)."""
  return setup.setup_run(_run_config(root), tmp_path_factory.mktemp("setup"), config_name="tiny")


def _check_run_card(card, hand):
  assert card["train_identities"] == hand.num_classes
  assert card["splits"]["train"] == len(hand.records)
  assert card["sampler_steps_per_epoch"] == _bot_epoch([lab for _, lab, _ in hand.records])
  sets = card["training_sets"]
  assert [(s["ids"], s["images"], s["cameras"]) for s in sets] == list(
    zip(hand.ids, hand.images, hand.cameras, strict=True)
  )
  assert [s["label_offset"] for s in sets] == [0, hand.ids[0]]
  assert [s["camera_offset"] for s in sets] == [0, hand.cameras[0]]


def test_a_run_on_the_union(root, combined_setup, capsys):
  hand = two_sets.hand_union(root)
  run = combined_setup
  assert run.config.model.num_classes == hand.num_classes
  assert run.train_iter.batches_per_epoch == _bot_epoch([lab for _, lab, _ in hand.records])
  _check_run_card(run.card, hand)
  text = run_card.format_run_card(run.card)
  assert "2 training sets: 80 training images, 20 train identities" in text
  assert f"market1501 from {root / 'synth_b'}: 10 ids, 40 images, 6 cameras" in text
  # Evaluated on the first set: its query and gallery, in its data_dir.
  assert (run.evaluators[0].dataset, run.evaluators[0].data_dir) == (
    "market1501",
    str(root / "tfds"),
  )


CHANGED_LISTS = [
  ({"datasets": ("market1501",)}, "input.datasets"),
  ({"combineall": True}, "input.combineall"),
]


def _changed(root, change):
  c = _run_config(root)
  for name, value in change.items():
    c.input[name] = value
  return c


def _refused_fields(error) -> list[str]:
  lines = [line.strip() for line in str(error).splitlines()]
  return [line.split(":")[0] for line in lines if line.startswith("input.")]


@pytest.mark.parametrize("change, field", CHANGED_LISTS)
def test_resume_with_another_list_is_refused(root, combined_setup, tmp_path, change, field):
  """Refused by the work-dir check (before any data work) and by the checkpoint's own
  config check (at restore), naming the one field."""
  workdir = tmp_path
  (workdir / "checkpoints" / "2").mkdir(parents=True)  # a checkpoint step of that run
  (workdir / "config.json").write_text(combined_setup.config.to_json())
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError) as e:
    train_loop.train_and_evaluate(_changed(root, change), workdir)
  assert _refused_fields(e.value) == [field]
  assert not (workdir / "run_card.json").exists()  # refused before the run started
  changed = data_setup.resolve_data_paths(_changed(root, change), root / "unused_workdir")
  changed.model.num_classes = combined_setup.config.model.num_classes
  changed.train.steps_per_epoch = combined_setup.config.train.steps_per_epoch
  with pytest.raises(checkpoint_restore.IncompatibleCheckpointError) as e:
    checkpoint.check_compatible(combined_setup.config, changed, "step 2")
  assert _refused_fields(e.value) == [field]


@pytest.mark.slow  # trains and evaluates the tiny model (a minute on 2 shared cores)
def test_combined_run_trains_resumes_and_refuses_another_list(root, tmp_path):
  hand = two_sets.hand_union(root)
  result = train_loop.train_and_evaluate(_run_config(root), tmp_path, config_name="tiny")
  assert result.step == 2 and result.config.model.num_classes == hand.num_classes
  assert json.loads((tmp_path / "config.json").read_text())["model"]["num_classes"] == 20
  _check_run_card(json.loads((tmp_path / "run_card.json").read_text()), hand)
  assert result.eval["dataset"] == "market1501"
  for change, field in CHANGED_LISTS:
    with pytest.raises(checkpoint_restore.IncompatibleCheckpointError) as e:
      train_loop.train_and_evaluate(_changed(root, change), tmp_path)
    assert _refused_fields(e.value) == [field]
  again = _run_config(root)
  again.train.num_epochs = 2  # the same list resumes
  assert train_loop.train_and_evaluate(again, tmp_path).step == 4


def test_a_moved_download_folder_is_no_other_list(root, combined_setup):
  """The sets are compared by name: their folders may move, as input.manual_dir may."""
  c = _run_config(root)
  c.input.datasets = (c.input.datasets[0], "market1501@/moved/synth_b")
  moved = data_setup.resolve_data_paths(c, root / "unused_workdir")
  moved.model.num_classes = combined_setup.config.model.num_classes
  moved.train.steps_per_epoch = combined_setup.config.train.steps_per_epoch
  assert checkpoint.resume_differences(combined_setup.config, moved) == []
