"""Refusals that come as early as they can, in one line:

- a dataset none of whose queries has a positive in another camera: when the Evaluator
  is built (before a run's first step), not at the first evaluation after an epoch;
  a fresh run refused so leaves no work dir behind (not even `train.lock`);
- resource limits (`ulimit -v`): a thread that cannot start is one ERROR line naming
  the limit; a limit at which JAX would abort is refused before JAX starts;
- config spellings: `--config=FILE:argument` for a config taking none, a config file
  name holding ':', a dangling symbolic link as an output folder.
"""

import os
import pathlib
import resource
import subprocess
import sys
import textwrap

import pytest

from data_pipelines.datasets import source
from fsaf_jax.core import cli, errors
from fsaf_jax.evaluation import evaluator
from fsaf_jax.training import train_loop
from tests.reference import ceiling, reid_layouts
from tests.reference import tiny_synthetic_run as run

REPO = pathlib.Path(__file__).resolve().parents[2]

# Train ids 0002, 0007; the only query's positive is in its own camera (not one).
NO_POSITIVE_FILES = (
  *(f for f in reid_layouts.MARKET_FILES if f.startswith("bounding_box_train/")),
  "bounding_box_train/0007_c1s1_012345_02.jpg",
  "query/0003_c1s1_000200_00.jpg",
  "bounding_box_test/0003_c1s1_000300_01.jpg",
  "bounding_box_test/0004_c2s1_000310_01.jpg",
)


@pytest.fixture(scope="module")
def no_positive_data(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("no_positive")
  reid_layouts.write_images(tmp / "download" / reid_layouts.MARKET_TOP, NO_POSITIVE_FILES)
  source.build("market1501", tmp / "tfds", tmp / "download")
  return tmp / "tfds"


def _config(data_dir):
  c = run.config("/unused")
  c.input.data_dir, c.input.manual_dir = str(data_dir), ""
  c.input.num_identities, c.input.num_instances = 2, 2
  return c


def test_no_positive_in_another_camera_is_refused_when_the_evaluator_is_built(no_positive_data):
  not_a_model = object()  # refused before the extractor is built from the model
  with pytest.raises(errors.UserError, match="None of the 1 queries has a positive") as e:
    evaluator.Evaluator(not_a_model, _config(no_positive_data))
  assert str(e.value).startswith(f"market1501 in {no_positive_data}: ")


def test_a_refused_fresh_run_leaves_no_work_dir(no_positive_data, tmp_path):
  with pytest.raises(errors.UserError, match="has a positive"):
    train_loop.train_and_evaluate(_config(no_positive_data), tmp_path / "w")
  assert not (tmp_path / "w").exists()


def _program(body: str, *args: str) -> subprocess.CompletedProcess:
  """Runs `body` (which calls cli.run) as a small program from the repository root."""
  return ceiling.run(
    [sys.executable, "-c", textwrap.dedent(body), *args],
    cwd=REPO,
    env={**os.environ, "PYTHONPATH": str(REPO)},
  )


def test_a_thread_that_cannot_start_is_one_line_naming_the_limit():
  proc = _program("""
    import resource, threading
    from fsaf_jax.core import cli, errors

    def main(argv):
      with open("/proc/self/status") as f:
        size = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
      # The address space in use and 1 MB more: a new thread's stack does not fit.
      hard = resource.getrlimit(resource.RLIMIT_AS)[1]
      resource.setrlimit(resource.RLIMIT_AS, (size + 2**20, hard))
      threading.Thread(target=print).start()

    cli.run(main)
  """)
  assert proc.returncode == 1, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 2 and "Traceback" not in proc.stderr, proc.stderr
  assert lines[0].startswith("ERROR: ") and "the address-space limit (ulimit -v) is " in lines[0]
  assert "GiB" in lines[0] and lines[1].startswith("hint: raise the limit")


def test_a_limit_jax_cannot_start_under_is_refused(monkeypatch):
  cli.check_address_space("eval.py")  # this machine's limit: enough (or unlimited)
  monkeypatch.setattr(resource, "getrlimit", lambda which: (600 * 2**20, resource.RLIM_INFINITY))
  with pytest.raises(errors.UserError, match=r"eval.py: the address-space limit .* 0.59 GiB"):
    cli.check_address_space("eval.py")


_CONFIG_PROGRAM = """
  from ml_collections import config_flags
  from fsaf_jax.core import cli, errors

  _CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.")

  def main(argv):
    print("ran", _CONFIG.value.seed)

  cli.run(main)
"""


def test_a_config_argument_to_a_config_taking_none_is_one_line():
  proc = _program(_CONFIG_PROGRAM, "--config=configs/tiny.py:foo")
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines() == [
    "ERROR: --config=configs/tiny.py:foo: this config takes no ':argument' (its get_config() "
    "has no parameter)",
    "hint: pass --config=configs/tiny.py and set fields with --config.<field>=<value>",
  ]


def test_a_config_file_name_with_a_colon_is_named_as_such(tmp_path):
  path = tmp_path / "my:config.py"
  path.write_text((REPO / "configs" / "base.py").read_text())
  proc = _program(_CONFIG_PROGRAM, f"--config={path}")
  assert proc.returncode == 2, proc.stderr
  assert "a config file name cannot contain ':'" in proc.stderr.splitlines()[0]
  assert "no such config file" not in proc.stderr


def test_a_dangling_symlink_output_folder_is_named_as_such(tmp_path):
  link = tmp_path / "workdir"
  link.symlink_to(tmp_path / "gone")
  for check in (cli.check_output_dir, cli.check_output_file):
    with pytest.raises(errors.UserError, match="is a symbolic link to .*gone, which does not"):
      check(link, "--workdir")
