"""Which data and which results an evaluation of a checkpoint touches
(fsaf_jax/evaluation/eval_data.py, `evaluator.evaluate_checkpoint`):

- the data the checkpoint's run recorded, not the config file's default data_dir
  (unless `--config.input.data_dir` is given on the command line);
- a named `--config.input.manual_dir` holding another copy than the build: refused;
- a moved work dir that used its default `WORKDIR/data/tfds`: its moved data is read;
- `--checkpoint` of another work dir than `--workdir`: refused, the work dir's results
  kept.

The run: checkpoints of the tiny model on the tiny Market tree built into the work
dir's default data_dir (`tests/reference/saved_run.py`); each test works on a copy.
"""

import json
import shutil

import pytest

from configs import tiny
from data_pipelines import errors
from data_pipelines.datasets import source
from fsaf_jax.evaluation import eval_data, evaluator
from tests.reference import reid_layouts, saved_run, tiny_market

STEP = 3

pytestmark = [  # the tiny tree's expected warnings
  pytest.mark.filterwarnings("ignore:max_rank=.*exceeds the gallery size:UserWarning"),
  pytest.mark.filterwarnings("ignore:.*queries have no positive:UserWarning"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
  """(work dir whose run read WORKDIR/data/tfds, a folder holding another, smaller
  market1501 build and its download)."""
  tmp = tmp_path_factory.mktemp("eval_data")
  workdir = tmp / "run"
  tiny_market.write_market(tmp / "download")
  source.build(tiny_market.DATASET, workdir / "data" / "tfds", tmp / "download")
  saved_run.save_run(workdir, saved_run.run_config(workdir / "data" / "tfds"), (STEP,))
  other = tmp / "other"
  reid_layouts.write_images(other / "download" / reid_layouts.MARKET_TOP, reid_layouts.MARKET_FILES)
  source.build("market1501", other / "tfds", other / "download")
  return workdir, other


@pytest.fixture
def workdir(pristine, tmp_path):
  shutil.copytree(pristine[0], tmp_path / "run")
  return tmp_path / "run"


def cli_config(data_dir=""):
  """What `--config=configs/tiny.py` gives eval.py (data paths as the command line names)."""
  config = tiny.get_config()
  config.input.data_dir = data_dir
  config.eval.num_figure_queries = 0
  return config


def test_the_config_files_data_dir_is_not_read_the_checkpoints_is(workdir, pristine):
  recorded, other = pristine[0] / "data" / "tfds", pristine[1]
  config = cli_config(str(other / "tfds"))  # a config file's default, e.g. ~/tensorflow_datasets
  result = evaluator.evaluate_checkpoint(
    eval_data.named_data_paths(config, overrides={}), workdir=workdir, write_figure=False
  )
  assert result["num_query"] == tiny_market.NUM_QUERY
  assert result["config"]["input"]["data_dir"] == str(recorded)
  # Named on the command line, it is the one read (a cross-domain or moved dataset).
  named = eval_data.named_data_paths(config, overrides={"input.data_dir": str(other / "tfds")})
  saved = saved_run.run_config(recorded)
  assert eval_data.eval_data_config(named, saved, workdir).input.data_dir == str(other / "tfds")


def test_a_named_manual_dir_with_another_copy_is_refused(workdir, pristine, monkeypatch):
  _, other = pristine
  monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated"))
  config = cli_config()
  config.input.manual_dir = str(other / "download")
  with pytest.raises(errors.OutputExistsError, match="holds another copy") as e:
    evaluator.evaluate_checkpoint(config, workdir=workdir)
  assert str(other / "download") in str(e.value)
  assert not (workdir / "eval").exists()


def test_a_moved_work_dir_reads_its_moved_data(pristine, tmp_path):
  original = pristine[0]  # moved for the test: the run's recorded data_dir is then gone
  moved = original.with_name("run_moved")
  original.rename(moved)
  try:
    result = evaluator.evaluate_checkpoint(
      cli_config(), workdir=moved, outdir=tmp_path, write_figure=False
    )
  finally:
    moved.rename(original)
  assert result["num_query"] == tiny_market.NUM_QUERY
  assert result["config"]["input"]["data_dir"] == str(moved / "data" / "tfds")
  assert json.loads((tmp_path / "eval" / f"step_{STEP}" / "metrics.json").read_text())["step"] == 3


def test_another_work_dirs_checkpoint_does_not_replace_the_results(workdir, tmp_path, monkeypatch):
  other_run = tmp_path / "other_run"
  shutil.copytree(workdir, other_run)
  (workdir / "eval" / f"step_{STEP}").mkdir(parents=True)
  (workdir / "eval" / f"step_{STEP}" / "metrics.json").write_text('{"mine": 1}')
  monkeypatch.setattr(evaluator, "evaluate_model", lambda *a, **k: pytest.fail("evaluated"))
  with pytest.raises(errors.UserError, match="belongs to the work dir") as e:
    evaluator.evaluate_checkpoint(
      cli_config(), workdir=workdir, checkpoint=other_run / "checkpoints" / str(STEP)
    )
  assert "--outdir" in e.value.hint
  assert (workdir / "eval" / f"step_{STEP}" / "metrics.json").read_text() == '{"mine": 1}'
